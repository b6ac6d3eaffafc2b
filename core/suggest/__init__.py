"""Code suggestions for every editor surface: the service and what it is made of.

``service`` answers one suggestion (prompt planning, healing, stop rules, time budget,
type-ahead); ``layout`` lays a prompt out so it stays the same while the user types;
``notebook`` writes a notebook's cells as the text a model reads.
"""

from .layout import ContextDocument, PromptPlan, comment_header
from .notebook import Cell, render_notebook
from .service import SuggestionPlan, SuggestionService, SuggestionText, SuggestOptions, SuggestRequest, collect

__all__ = ["Cell", "ContextDocument", "PromptPlan", "SuggestOptions", "SuggestRequest", "SuggestionPlan",
           "SuggestionService", "SuggestionText", "collect", "comment_header", "render_notebook"]
