-- The llamalab language server for Neovim 0.11+ (`:help lsp-config`).
--
-- Neovim reads this file from the `lsp/` folder of any 'runtimepath' entry, so with this
-- folder on the runtimepath (or this file copied to ~/.config/nvim/lsp/llamalab.lua)
--
--   vim.lsp.enable('llamalab')
--
-- starts `llamalab lsp` for the filetypes below. Override any field with
-- vim.lsp.config('llamalab', { init_options = { model = 'codellama-7b:q4_k_m' } }).
-- For ghost text on Neovim 0.11 (which has no built-in inline completion) use the plugin:
-- require('llamalab').setup({...}).
return {
  cmd = { 'llamalab', 'lsp' },
  filetypes = {
    'python', 'lua', 'c', 'cpp', 'cuda', 'rust', 'go', 'java', 'kotlin', 'scala', 'cs',
    'javascript', 'javascriptreact', 'typescript', 'typescriptreact', 'vue', 'svelte',
    'html', 'css', 'scss', 'json', 'yaml', 'toml', 'sh', 'bash', 'zsh', 'fish', 'ruby', 'php',
    'perl', 'r', 'julia', 'swift', 'zig', 'haskell', 'ocaml', 'elixir', 'erlang', 'clojure',
    'dart', 'sql', 'make', 'cmake', 'dockerfile', 'tex', 'markdown', 'vim',
  },
  -- One server (one model in memory) for every project: reuse it whatever the root.
  reuse_client = function(client, config)
    return client.name == config.name
  end,
  -- initializationOptions, read by the server once at start; every key is optional
  -- (see the README's table): model, remoteUrl, remoteModel, maxTokens, debounceMs, nCtx, ...
  init_options = vim.empty_dict(),
}
