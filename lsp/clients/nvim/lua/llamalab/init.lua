-- llamalab for Neovim 0.11+: inline code completion (ghost text) from `llamalab lsp`.
--
--   require('llamalab').setup({ init_options = { model = 'codellama-7b:q4_k_m' } })
--
-- registers the server with vim.lsp.config / vim.lsp.enable. Ghost text comes from Neovim's
-- own vim.lsp.inline_completion where it exists (0.12+), from llamalab.ghost otherwise (0.11).
-- <Tab> accepts a suggestion and does what it did before when there is none.

local api = vim.api

local M = {}

M.defaults = {
  -- The server: any field left nil keeps the value of lsp/llamalab.lua.
  cmd = nil, -- e.g. { '/path/to/venv/bin/llamalab', 'lsp' }
  filetypes = nil, -- a list of filetypes; nil: the list in lsp/llamalab.lua
  -- initializationOptions for the server; camelCase or snake_case keys (max_tokens = maxTokens).
  init_options = {},
  -- The client side.
  ghost_text = 'auto', -- 'auto': Neovim's built-in where it exists; 'plugin': always ours; false: none
  debounce_ms = 150, -- wait this long after the last key before asking (the plugin's ghost text)
  auto_trigger = true, -- ask while typing; false: only :LlamalabSuggest / require('llamalab').suggest()
  accept_key = '<Tab>', -- accepts the suggestion, else does what the key did before (false: no mapping)
  accept_line_key = false, -- e.g. '<C-l>': accepts only the suggestion's first line
  dismiss_key = false, -- e.g. '<C-]>': drops the suggestion
  hl_group = 'LlamalabGhost', -- linked to Comment unless you define it
  enabled = true,
}

M.config = vim.deepcopy(M.defaults)

--- Whether this Neovim has built-in LSP inline completion (0.12+).
function M.has_builtin()
  return vim.lsp.inline_completion ~= nil and type(vim.lsp.inline_completion.enable) == 'function'
end

--- 'builtin', 'plugin' or 'off': who draws ghost text with the current options.
function M.mode()
  local g = M.config.ghost_text
  if g == false or g == 'off' then
    return 'off'
  end
  if g == 'auto' and M.has_builtin() then
    return 'builtin'
  end
  return g == 'builtin' and M.has_builtin() and 'builtin' or 'plugin'
end

local function camel(key)
  return (key:gsub('_(%l)', string.upper))
end

--- The initializationOptions sent to the server: `opts.init_options` with camelCase keys.
function M.init_options(opts)
  local out = {}
  for key, value in pairs((opts or M.config).init_options or {}) do
    out[camel(key)] = value
  end
  return out
end

-- Keys --------------------------------------------------------------------------------

local function termcodes(keys)
  return api.nvim_replace_termcodes(keys, true, false, true)
end

-- Runs what `key` did in Insert mode before our mapping replaced it. The keys go to the front
-- of the typeahead ('i'), before anything typed after `key`.
local function fallback(previous, key)
  local function feed(keys, noremap)
    api.nvim_feedkeys(keys, (noremap and 'n' or 'm') .. 'i', false)
  end
  if previous and previous.callback then
    local result = previous.callback()
    if previous.expr == 1 and type(result) == 'string' then
      feed(previous.replace_keycodes == 1 and termcodes(result) or result, previous.noremap == 1)
    end
  elseif previous and previous.rhs and previous.rhs ~= '' then
    local keys = previous.expr == 1 and api.nvim_eval(previous.rhs) or previous.rhs
    feed(termcodes(keys), previous.noremap == 1)
  else
    feed(termcodes(key), true)
  end
end

local function accept(opts)
  if M.mode() == 'builtin' then
    local ok, accepted = pcall(vim.lsp.inline_completion.get)
    return ok and accepted == true
  end
  return require('llamalab.ghost').accept(opts)
end

local function map_key(key, action, desc)
  local existing = vim.fn.maparg(key, 'i', false, true)
  local previous = (existing and existing.lhs and not (existing.desc or ''):match('^llamalab')) and existing or nil
  vim.keymap.set('i', key, function()
    if not action() then
      fallback(previous, key)
    end
  end, { desc = 'llamalab: ' .. desc, silent = true })
end

local function map_keys(cfg)
  if cfg.accept_key then
    map_key(cfg.accept_key, function()
      return M.config.enabled and accept()
    end, 'accept the suggestion')
  end
  if cfg.accept_line_key then
    map_key(cfg.accept_line_key, function()
      return M.config.enabled and accept({ line = true })
    end, 'accept the first line of the suggestion')
  end
  if cfg.dismiss_key then
    map_key(cfg.dismiss_key, function()
      if M.mode() == 'plugin' and require('llamalab.ghost').visible() then
        require('llamalab.ghost').dismiss()
        return true
      end
      return false
    end, 'dismiss the suggestion')
  end
end

-- Turning it on and off ------------------------------------------------------------------

local function set_builtin(enable, bufnr)
  pcall(vim.lsp.inline_completion.enable, enable, bufnr and { bufnr = bufnr } or nil)
end

--- Turns suggestions on or off (nil: toggles) without stopping the server.
function M.toggle(enable)
  if enable == nil then
    enable = not M.config.enabled
  end
  M.config.enabled = enable
  local ghost = require('llamalab.ghost')
  ghost.state.enabled = enable and M.mode() == 'plugin'
  if not enable then
    ghost.dismiss()
  end
  if M.mode() == 'builtin' then
    for _, client in ipairs(vim.lsp.get_clients({ name = 'llamalab' })) do
      for bufnr in pairs(client.attached_buffers) do
        set_builtin(enable, bufnr)
      end
    end
  end
  return enable
end

--- Asks for a suggestion at the cursor now (also when auto_trigger is off).
function M.suggest()
  if M.mode() == 'plugin' then
    return require('llamalab.ghost').request(1)
  end
  return false
end

--- Stops the server and starts it again (it reloads the model).
function M.restart()
  vim.lsp.enable('llamalab', false)
  local deadline = vim.uv.now() + 5000
  local function again()
    if #vim.lsp.get_clients({ name = 'llamalab' }) > 0 and vim.uv.now() < deadline then
      return vim.defer_fn(again, 100)
    end
    vim.lsp.enable('llamalab', true)
  end
  vim.defer_fn(again, 100)
end

--- One line per fact, for :LlamalabStatus.
function M.status()
  local ghost = require('llamalab.ghost')
  local lines = {
    ('llamalab: suggestions %s, ghost text: %s (Neovim %s)'):format(M.config.enabled and 'on' or 'off',
      M.mode(), tostring(vim.version())),
  }
  local clients = vim.lsp.get_clients({ name = 'llamalab' })
  if #clients == 0 then
    lines[#lines + 1] = 'server: not running (it starts when a buffer of a configured filetype opens)'
  end
  for _, client in ipairs(clients) do
    local buffers = vim.tbl_count(client.attached_buffers)
    lines[#lines + 1] = ('server: client %d, %s, %d buffer(s), %s, cmd: %s'):format(client.id,
      client.initialized and 'running' or 'starting', buffers, client.offset_encoding,
      table.concat(type(client.config.cmd) == 'table' and client.config.cmd or { '?' }, ' '))
    lines[#lines + 1] = 'initializationOptions: ' .. vim.json.encode(client.config.init_options or {})
  end
  if M.mode() == 'plugin' then
    local s = ghost.state.stats
    lines[#lines + 1] = ('requests %d, answered %d, cancelled %d, empty %d, shown %d, accepted %d, errors %d')
      :format(s.requests, s.responses, s.cancelled, s.empty, s.shown, s.accepted, s.errors)
    if ghost.state.last_latency_ms then
      lines[#lines + 1] = ('last answer in %.0f ms'):format(ghost.state.last_latency_ms)
    end
    if ghost.state.last_error then
      lines[#lines + 1] = 'last error: ' .. ghost.state.last_error
    end
  end
  return lines
end

--- A short string for a statusline: '' when no server runs for the buffer.
function M.statusline()
  if #vim.lsp.get_clients({ bufnr = 0, name = 'llamalab' }) == 0 then
    return ''
  end
  return M.config.enabled and 'llamalab' or 'llamalab (off)'
end

local function commands()
  api.nvim_create_user_command('LlamalabToggle', function(args)
    local value = ({ on = true, off = false })[args.args]
    local enabled = M.toggle(value)
    vim.notify('llamalab suggestions ' .. (enabled and 'on' or 'off'))
  end, { nargs = '?', complete = function() return { 'on', 'off' } end,
         desc = 'llamalab: turn suggestions on/off' })
  api.nvim_create_user_command('LlamalabStatus', function()
    vim.notify(table.concat(M.status(), '\n'))
  end, { desc = 'llamalab: server and suggestion status' })
  api.nvim_create_user_command('LlamalabSuggest', function()
    M.suggest()
  end, { desc = 'llamalab: ask for a suggestion at the cursor' })
  api.nvim_create_user_command('LlamalabRestart', function()
    M.restart()
  end, { desc = 'llamalab: restart the language server' })
  api.nvim_create_user_command('LlamalabLog', function()
    vim.cmd.tabedit(vim.fn.fnameescape(vim.lsp.log.get_filename()))
  end, { desc = "llamalab: open the LSP log (the server's log lines are there)" })
end

--- Registers and enables the server, the ghost text, the keys and the commands.
function M.setup(opts)
  if vim.fn.has('nvim-0.11') == 0 then
    vim.notify('llamalab needs Neovim 0.11 or newer', vim.log.levels.ERROR)
    return
  end
  M.config = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts or {})
  local cfg = M.config
  local server = { init_options = M.init_options(cfg) }
  if M.mode() == 'plugin' and server.init_options.debounceMs == nil then
    server.init_options.debounceMs = 0 -- the plugin already waits debounce_ms before asking
  end
  if next(server.init_options) == nil then
    server.init_options = nil
  end
  server.cmd = cfg.cmd
  server.filetypes = cfg.filetypes
  vim.lsp.config('llamalab', server)

  api.nvim_set_hl(0, 'LlamalabGhost', { link = 'Comment', default = true })
  local ghost = require('llamalab.ghost')
  ghost.configure({ debounce_ms = cfg.debounce_ms, hl_group = cfg.hl_group, auto_trigger = cfg.auto_trigger })
  ghost.state.enabled = cfg.enabled and M.mode() == 'plugin'
  if M.mode() == 'plugin' then
    ghost.attach_autocmds()
  elseif M.mode() == 'builtin' then
    api.nvim_create_autocmd('LspAttach', {
      group = api.nvim_create_augroup('llamalab.builtin', { clear = true }),
      callback = function(args)
        local client = vim.lsp.get_client_by_id(args.data.client_id)
        if client and client.name == 'llamalab' and M.config.enabled then
          set_builtin(true, args.buf)
        end
      end,
    })
  end
  map_keys(cfg)
  commands()
  vim.lsp.enable('llamalab')
end

return M
