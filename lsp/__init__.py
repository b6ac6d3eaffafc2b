"""llamalab.lsp: the language server for inline code completion in editors (see issue 6)."""
