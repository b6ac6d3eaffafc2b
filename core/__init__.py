"""llamalab: run Meta's Llama-2 family locally, in JupyterLab and your editor, on llama.cpp."""
