-- Ghost text for Neovim 0.11, which has no built-in `textDocument/inlineCompletion`.
--
-- While typing in Insert mode a debounced request goes to the llamalab client attached to the
-- buffer; a newer one cancels the one in flight (`$/cancelRequest`, and the server stops that
-- generation within a token). The first item is drawn with an extmark: `virt_text` inline at
-- the cursor for its first line, `virt_lines` below for the rest. Typing the characters it
-- predicts keeps it (shortened); any other edit or move drops it and asks again; leaving
-- Insert mode drops it. `accept()` inserts it.

local api = vim.api
local uv = vim.uv or vim.loop

local M = {}

local METHOD = 'textDocument/inlineCompletion'
local CANCELLED = -32800 -- LSP RequestCancelled
M.ns = api.nvim_create_namespace('llamalab.ghost')

local cfg = { client_name = 'llamalab', debounce_ms = 150, hl_group = 'LlamalabGhost', auto_trigger = true }

--- Everything the plugin knows now; read by :LlamalabStatus and the tests.
M.state = {
  enabled = true,
  suggestion = nil, -- { bufnr, row, col, end_col, before, lines, item }
  request = nil, -- { client, id, bufnr }
  stats = { requests = 0, cancelled = 0, responses = 0, empty = 0, shown = 0, accepted = 0, errors = 0 },
  last_latency_ms = nil,
  last_error = nil,
}

local timer = nil

function M.configure(opts)
  cfg = vim.tbl_extend('force', cfg, opts or {})
end

--- The llamalab client attached to `bufnr`, if one is running.
function M.client(bufnr)
  return vim.lsp.get_clients({ bufnr = bufnr, name = cfg.client_name })[1]
end

local function in_insert_mode()
  return api.nvim_get_mode().mode:sub(1, 1) == 'i'
end

-- Drawing -------------------------------------------------------------------------------

local function erase(bufnr)
  if bufnr and api.nvim_buf_is_valid(bufnr) then
    api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
  end
end

local function draw(s)
  erase(s.bufnr)
  local virt_lines = {}
  for i = 2, #s.lines do
    virt_lines[#virt_lines + 1] = { { s.lines[i], cfg.hl_group } }
  end
  local mark = { virt_text_pos = 'inline', hl_mode = 'combine', priority = 200 }
  if s.lines[1] ~= '' then
    mark.virt_text = { { s.lines[1], cfg.hl_group } }
  end
  if #virt_lines > 0 then
    mark.virt_lines = virt_lines
  end
  api.nvim_buf_set_extmark(s.bufnr, M.ns, s.row, s.col, mark)
end

--- Drops the suggestion on screen, if any.
function M.clear()
  local s = M.state.suggestion
  M.state.suggestion = nil
  if s then
    erase(s.bufnr)
  end
end

--- Cancels the request in flight, if any (`$/cancelRequest`).
function M.cancel()
  local r = M.state.request
  M.state.request = nil
  if r then
    r.superseded = true -- a reply that still comes is dropped
  end
  if r and r.client and not r.client:is_stopped() then
    r.client:cancel_request(r.id)
    M.state.stats.cancelled = M.state.stats.cancelled + 1
  end
end

function M.visible()
  local s = M.state.suggestion
  return s ~= nil and s.bufnr == api.nvim_get_current_buf()
end

-- Requests ------------------------------------------------------------------------------

local function item_text(item)
  local text = item.insertText
  if type(text) == 'table' then -- StringValue (a snippet): show and insert it as plain text
    text = text.value
  end
  return type(text) == 'string' and text or nil
end

-- The suggestion for `item` at the cursor, or nil when it cannot be shown as ghost text.
local function to_suggestion(item, bufnr, row, col, line, encoding)
  local text = item_text(item)
  if not text or text == '' then
    return nil
  end
  local start_col, end_col = col, col
  local range = item.range
  if range and range.start.line == row and range['end'].line == row then
    start_col = vim.str_byteindex(line, encoding, range.start.character, false)
    end_col = math.max(col, vim.str_byteindex(line, encoding, range['end'].character, false))
  end
  if start_col < col then -- the item repeats what was typed since range.start: show the rest
    local typed = line:sub(start_col + 1, col)
    if text:sub(1, #typed) ~= typed then
      return nil
    end
    text = text:sub(#typed + 1)
  end
  local lines = vim.split(text, '\n', { plain = true })
  if #lines == 1 and lines[1] == '' then
    return nil
  end
  return { bufnr = bufnr, row = row, col = col, end_col = end_col, before = line:sub(1, col),
           lines = lines, item = item }
end

--- Asks the server for a suggestion at the cursor now (`trigger_kind` 1 = invoked, 2 = automatic).
function M.request(trigger_kind)
  local bufnr = api.nvim_get_current_buf()
  local client = M.client(bufnr)
  M.cancel()
  if not client then
    return false
  end
  local win = api.nvim_get_current_win()
  local params = vim.lsp.util.make_position_params(win, client.offset_encoding)
  params.context = { triggerKind = trigger_kind or 2 }
  local tick = api.nvim_buf_get_changedtick(bufnr)
  local cursor = api.nvim_win_get_cursor(win)
  local started = uv.hrtime()
  local request = { client = client, bufnr = bufnr }
  M.state.stats.requests = M.state.stats.requests + 1
  local ok, id = client:request(METHOD, params, function(err, result)
    if M.state.request == request then
      M.state.request = nil
    end
    if err then
      if err.code ~= CANCELLED then
        M.state.stats.errors = M.state.stats.errors + 1
        M.state.last_error = err.message
      end
      return
    end
    M.state.stats.responses = M.state.stats.responses + 1
    M.state.last_latency_ms = (uv.hrtime() - started) / 1e6
    -- A reply to a superseded request, or for a buffer state that is gone, is dropped.
    if request.superseded or not M.state.enabled or not api.nvim_buf_is_valid(bufnr)
        or api.nvim_get_current_buf() ~= bufnr or api.nvim_buf_get_changedtick(bufnr) ~= tick
        or not vim.deep_equal(api.nvim_win_get_cursor(0), cursor) or not in_insert_mode() then
      return
    end
    local items = result and (result.items or result) or {}
    local row, col = cursor[1] - 1, cursor[2]
    local line = api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''
    for _, item in ipairs(items) do
      local s = to_suggestion(item, bufnr, row, col, line, client.offset_encoding)
      if s then
        M.clear()
        M.state.suggestion = s
        M.state.stats.shown = M.state.stats.shown + 1
        draw(s)
        return
      end
    end
    M.state.stats.empty = M.state.stats.empty + 1
  end, bufnr)
  if not ok then
    return false
  end
  request.id = id
  M.state.request = request
  return true
end

-- Typing --------------------------------------------------------------------------------

local function schedule_request()
  if timer then
    timer:stop()
  else
    timer = uv.new_timer()
  end
  timer:start(cfg.debounce_ms, 0, vim.schedule_wrap(function()
    if M.state.enabled and in_insert_mode() and M.client(api.nvim_get_current_buf()) then
      M.request(2)
    end
  end))
end

-- Keeps the suggestion when what was typed since it was shown is its beginning.
local function typed_through(s, bufnr, row, col)
  if not s or s.bufnr ~= bufnr or s.row ~= row then
    return false
  end
  local before = api.nvim_get_current_line():sub(1, col)
  if before == s.before then
    return true -- the same place (TextChangedI and CursorMovedI both fire for one key)
  end
  if #before <= #s.before or before:sub(1, #s.before) ~= s.before then
    return false
  end
  local typed = before:sub(#s.before + 1)
  if s.lines[1]:sub(1, #typed) ~= typed then
    return false
  end
  s.lines[1] = s.lines[1]:sub(#typed + 1)
  s.before, s.col, s.end_col = before, col, math.max(col, s.end_col + #typed)
  if #s.lines == 1 and s.lines[1] == '' then
    return false -- typed to its end
  end
  draw(s)
  return true
end

--- Called on every Insert-mode change or move.
function M.on_change()
  if not M.state.enabled then
    return
  end
  local bufnr = api.nvim_get_current_buf()
  local cursor = api.nvim_win_get_cursor(0)
  if typed_through(M.state.suggestion, bufnr, cursor[1] - 1, cursor[2]) then
    return
  end
  M.clear()
  M.cancel()
  if cfg.auto_trigger and M.client(bufnr) then
    schedule_request()
  end
end

--- Drops the suggestion and stops any request (leaving Insert mode, leaving the buffer).
function M.dismiss()
  if timer then
    timer:stop()
  end
  M.clear()
  M.cancel()
end

--- Inserts the suggestion (or only its first line) and puts the cursor after it.
--- Returns false when there was none.
function M.accept(opts)
  local s = M.state.suggestion
  if not s or s.bufnr ~= api.nvim_get_current_buf() then
    return false
  end
  M.clear()
  local lines = s.lines
  if opts and opts.line and #lines > 1 then
    lines = { lines[1] }
  end
  api.nvim_buf_set_text(s.bufnr, s.row, s.col, s.row, s.end_col, lines)
  local row = s.row + #lines - 1
  local col = #lines == 1 and s.col + #lines[1] or #lines[#lines]
  api.nvim_win_set_cursor(0, { row + 1, col })
  M.state.stats.accepted = M.state.stats.accepted + 1
  return true
end

--- Installs the autocommands (once).
function M.attach_autocmds()
  local group = api.nvim_create_augroup('llamalab.ghost', { clear = true })
  api.nvim_create_autocmd({ 'InsertEnter', 'TextChangedI', 'CursorMovedI' }, {
    group = group,
    callback = function(args)
      if M.client(args.buf) then
        M.on_change()
      end
    end,
  })
  api.nvim_create_autocmd('InsertCharPre', {
    group = group,
    callback = function()
      -- A key that does not continue the suggestion makes the request in flight useless.
      local s = M.state.suggestion
      if M.state.request and not (s and s.lines[1]:sub(1, #vim.v.char) == vim.v.char) then
        M.cancel()
      end
    end,
  })
  api.nvim_create_autocmd({ 'InsertLeave', 'BufLeave' }, { group = group, callback = M.dismiss })
  api.nvim_create_autocmd('LspDetach', {
    group = group,
    callback = function(args)
      local client = vim.lsp.get_client_by_id(args.data.client_id)
      if client and client.name == cfg.client_name then
        M.dismiss()
      end
    end,
  })
end

return M
