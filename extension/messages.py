"""The wire messages of llamalab's Jupyter API, typed with pydantic and tagged by ``type``.

Every message a client sends over the chat WebSocket carries an ``id``; every reply the
server sends for it repeats that ``id`` (``token``, ``done``, ``ack``, ``history`` and
``error``), so one connection can run several conversations at once. REST routes answer
with the models below too, and errors everywhere are an ``ErrorMessage`` whose ``message``
is one line for a person (``detail`` holds the rest, on demand).

``llamalab.extension.schema`` dumps these models as JSON schema; the TypeScript front end
generates its types from that file instead of copying them by hand.

    client -> server (WebSocket /llamalab/chat)    server -> client
    ----------------------------------------       ---------------------------------------
    chat     {id, conversation_id, content,         hello          on connect: model, protocol, limits
              history?, ...}
    cancel   {id, target?, conversation_id?}        token          {id, conversation_id, text}
    reset    {id, conversation_id}                  done           {id, ..., finish_reason, usage}
    history  {id, conversation_id}                  ack            {id, of, cancelled}
                                                    history        {id, conversation_id, messages}
                                                    error          {id?, code, message, detail?}
                                                    model_changed  {model?}
                                                    job_progress   {job}  (pull, convert, quantize)
                                                    conversation_changed {conversation_id, revision?}

A chat's ``conversation_id`` names a conversation the server keeps as a file (``conversations``):
the server reads its history from there and appends each finished turn to it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PROTOCOL_VERSION = 1
MAX_HISTORY_TURNS = 200  # the most earlier turns a chat request may seed a conversation with

RequestId = Annotated[str, Field(min_length=1, max_length=128, description="chosen by the client, repeated in every reply")]
ConversationId = Annotated[str, Field(min_length=1, max_length=128)]

ErrorCode = Literal[
    "bad_request",        # not JSON, a missing or wrong field
    "forbidden",          # not logged in, a wrong token, a cross-site request
    "unknown_type",       # a message type the server does not know
    "not_found",          # no such job, conversation or route
    "model_not_found",    # the model is not in the store or the catalog
    "model_not_allowed",  # the server's allowed_models does not list it
    "prompt_too_long",    # over the server's max_prompt_chars, or the context window
    "busy",               # the queue is full, or the conversation is still answering
    "license_required",   # the model's licence must be accepted first
    "engine_error",       # the model failed to load or to generate
    "internal",           # a bug: the server log has the traceback
    "conflict",           # a stale write (another tab changed the conversation first), an id already taken
    "too_large",          # a body, conversation or number of conversations over the server's caps
]


class _Wire(BaseModel):
    # Fields with defaults are still always sent, so the schema of what the server sends marks them required.
    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


# -- shared pieces -----------------------------------------------------------------------
class SamplingParams(_Wire):
    """Sampling settings; a field left out takes the server's default."""

    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=5)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=0)
    min_p: Optional[float] = Field(None, ge=0, le=1)
    repeat_penalty: Optional[float] = Field(None, gt=0)
    stop: list[str] = Field(default_factory=list, max_length=8)
    seed: Optional[int] = None


class ChatTurn(_Wire):
    role: Literal["system", "user", "assistant"]
    content: str


class LoadedModel(_Wire):
    """The model the server has loaded (or, remote, the one it talks to)."""

    name: str
    backend: Literal["local", "remote"]
    location: str
    architecture: Optional[str] = None
    quantization: Optional[str] = None
    context_length: Optional[int] = None
    n_gpu_layers: Optional[int] = None
    total_layers: Optional[int] = None
    chat_format: Optional[str] = None
    notices: list[str] = Field(default_factory=list)


class Usage(_Wire):
    prompt_tokens: int
    completion_tokens: int
    dropped_messages: int = 0
    time_to_first_token_s: Optional[float] = None
    duration_s: float = 0.0
    reused_prompt_tokens: Optional[int] = Field(
        None, description="prompt tokens already in the model's cache, not evaluated again (local models)")


# -- client -> server (WebSocket) --------------------------------------------------------
class ChatRequest(_Wire):
    """Send ``content`` as the user's next message in ``conversation_id``; the server keeps the
    conversation's history for the life of the connection.

    ``history`` seeds a conversation the server does not know yet (its first request on this
    connection, say after a reconnect or a page reload): the earlier turns, oldest first,
    alternating user and assistant and ending with an answer (no system turn: the system prompt
    goes in ``system``). Once the conversation has turns on this connection, ``history`` is
    ignored: the server's own turns win. Its characters together count against the server's
    ``max_prompt_chars``, and turns that do not fit the context window are left out, oldest first,
    as for any conversation (``done.notice`` says so).

    ``kernel`` (the chat's "Kernel" context) names the notebook's running kernel: the names it
    defines are read (silently, only when it is idle) and go into this turn's system prompt."""

    type: Literal["chat"]
    id: RequestId
    conversation_id: ConversationId = "default"
    content: str
    system: Optional[str] = Field(None, description="replaces the conversation's system prompt")
    model: Optional[str] = Field(None, description="a model name; omitted: the server's current model")
    params: SamplingParams = Field(default_factory=SamplingParams)
    history: Optional[list[ChatTurn]] = Field(
        None, max_length=MAX_HISTORY_TURNS,
        description="earlier turns (user, assistant, ...) for a conversation new to this connection; "
                    "ignored when the server already has turns for it")
    kernel: Optional[KernelRef] = Field(
        None, description="the notebook's kernel: the names it defines (variables, functions, DataFrame "
                          "columns) go into this turn's system prompt")
    display: Optional[str] = Field(
        None, max_length=200_000, description="what the conversation shows for the message when it differs from "
                                              "content (context blocks prepended); stored with the turn")
    context: Optional[list[Annotated[str, Field(max_length=500)]]] = Field(
        None, description="labels (at most 16) of the context blocks sent with the message; stored with the turn")

    @field_validator("context")
    @classmethod
    def _few_labels(cls, labels: Optional[list[str]]) -> Optional[list[str]]:
        if labels is not None and len(labels) > 16:
            raise ValueError(f"at most 16 context labels, got {len(labels)}")
        return labels

    @field_validator("history")
    @classmethod
    def _alternating(cls, turns: Optional[list[ChatTurn]]) -> Optional[list[ChatTurn]]:
        for i, turn in enumerate(turns or ()):
            if turn.role == "system":
                raise ValueError(f"turn {i} is a system turn; send the system prompt in the 'system' field")
            expected = "user" if i % 2 == 0 else "assistant"
            if turn.role != expected:
                raise ValueError(f"turn {i} should be the {expected}'s: turns alternate user and assistant, "
                                 "starting with the user's")
        if turns and len(turns) % 2:
            raise ValueError("the last turn should be the assistant's (the new message is the user's)")
        return turns


class CancelRequest(_Wire):
    """Stop a generation: the request ``target``, or every one of ``conversation_id``, or
    (neither given) every generation of this connection."""

    type: Literal["cancel"]
    id: RequestId
    target: Optional[str] = None
    conversation_id: Optional[ConversationId] = None


class ResetRequest(_Wire):
    """Forget a conversation's history (cancelling its generation, if any)."""

    type: Literal["reset"]
    id: RequestId
    conversation_id: ConversationId = "default"


class HistoryRequest(_Wire):
    type: Literal["history"]
    id: RequestId
    conversation_id: ConversationId = "default"


ClientMessage = Annotated[Union[ChatRequest, CancelRequest, ResetRequest, HistoryRequest],
                          Field(discriminator="type")]
CLIENT_TYPES = ("chat", "cancel", "reset", "history")


# -- server -> client --------------------------------------------------------------------
class HelloMessage(_Wire):
    type: Literal["hello"] = "hello"
    protocol: int = PROTOCOL_VERSION
    model: Optional[LoadedModel] = Field(None, description="None until the first request loads it")
    default_model: str = Field(description="what a request naming no model gets ('' : the remote server's choice)")
    max_prompt_chars: int = Field(description="the longest message (and, apart, history) a chat request may send")
    max_tokens_limit: int = Field(description="the largest max_tokens honoured; larger requests are capped")


class TokenMessage(_Wire):
    type: Literal["token"] = "token"
    id: str
    conversation_id: str
    text: str


class DoneMessage(_Wire):
    type: Literal["done"] = "done"
    id: str
    conversation_id: str
    model: str
    text: str
    finish_reason: Literal["stop", "length", "cancelled"]
    usage: Usage
    notice: Optional[str] = Field(None, description="e.g. that old turns were left out to fit the context")


class AckMessage(_Wire):
    type: Literal["ack"] = "ack"
    id: str
    of: Literal["cancel", "reset"]
    cancelled: list[str] = Field(default_factory=list, description="ids of the generations stopped")


class HistoryMessage(_Wire):
    type: Literal["history"] = "history"
    id: str
    conversation_id: str
    messages: list[ChatTurn]


class ErrorMessage(_Wire):
    """An error reply, over the WebSocket and as the body of a failed REST request."""

    type: Literal["error"] = "error"
    id: Optional[str] = Field(None, description="the request's id, when it could be read")
    code: ErrorCode
    message: str = Field(description="one line for a person")
    detail: Optional[Any] = None


class ModelChangedMessage(_Wire):
    type: Literal["model_changed"] = "model_changed"
    model: Optional[LoadedModel] = Field(None, description="None: the model was unloaded")


# -- REST --------------------------------------------------------------------------------
class StoredModelInfo(_Wire):
    name: str
    path: str
    size_bytes: int
    architecture: str
    quantization: str
    context_length: int
    license: Optional[str] = None
    source: str
    loaded: bool = False
    allowed: bool = True


class CatalogModelInfo(_Wire):
    name: str
    description: str
    parameters: str
    license: str
    license_url: str
    chat_format: str
    quantizations: list[str]
    default_quant: str
    requires_license_acceptance: bool


class RemoteModelInfo(_Wire):
    """One model the team server lists at ``/v1/models``."""

    id: str
    in_use: bool = Field(False, description="the one requests that name no model go to")
    allowed: bool = Field(True, description="False: this server's allowed_models does not list it")


class RemoteServerInfo(_Wire):
    """The team server this Jupyter server fronts (``remote_url``)."""

    url: str = Field(description="without credentials or query string")
    kind: Optional[str] = Field(None, description="'llamalab serve', 'llama-server' or 'openai-compatible'; "
                                                  "None: unknown (not reached)")
    models: list[RemoteModelInfo] = Field(default_factory=list, description="at most 100, in the server's order")
    error: Optional[str] = Field(None, description="one line: why the server could not be listed and what to do")


class ModelsReply(_Wire):
    type: Literal["models"] = "models"
    default_model: str
    loaded: Optional[LoadedModel] = None
    stored: list[StoredModelInfo]
    catalog: list[CatalogModelInfo]
    remote: Optional[RemoteServerInfo] = Field(None, description="the team server; None: no remote_url is set")


class LoadRequest(_Wire):
    """POST /llamalab/models/load: load (or switch to) a model now instead of on first use."""

    model: Optional[str] = None


class UnloadReply(_Wire):
    type: Literal["unloaded"] = "unloaded"
    model: Optional[str] = None


class PullRequest(_Wire):
    """POST /llamalab/pulls: pull a model into the store in the background."""

    model: str = Field(min_length=1, max_length=1000)
    accept_license: bool = False
    force: bool = False


JobKind = Literal["pull", "convert", "quantize"]
JobState = Literal["running", "done", "failed", "cancelled"]


class Job(_Wire):
    """A background job of the model manager: a pull, a conversion or a quantization.

    ``done`` of ``total`` counts ``unit`` of the current ``stage`` (bytes for downloads, hashing and
    writing a GGUF; steps for llama.cpp's quantizer).

    ``state`` stays ``running`` while it waits its turn (``stage == "queued"``: conversions and
    quantizations run one at a time) and while it works; then ``done`` (``stored_name`` says what
    the store now holds), ``failed`` (``error``) or ``cancelled`` (DELETE /llamalab/jobs/{id})."""

    type: Literal["job"] = "job"
    id: str
    kind: JobKind
    model: str = Field(description="what the job is about: the model reference, source folder or stored model")
    state: JobState
    stage: str = ""
    done: int = 0
    total: Optional[int] = None
    unit: str = Field("B", description='what done and total count: "B" for bytes, else e.g. "it" (steps) or '
                                         '"tensors", as the stage reports it')
    fraction: Optional[float] = None
    message: str = ""
    error: Optional[ErrorMessage] = None
    stored_name: Optional[str] = None
    started_at: float
    finished_at: Optional[float] = None


class JobList(_Wire):
    type: Literal["jobs"] = "jobs"
    jobs: list[Job]


class JobProgressMessage(_Wire):
    """Sent to every chat WebSocket, and on GET /llamalab/jobs/{id}/events as server-sent events."""

    type: Literal["job_progress"] = "job_progress"
    job: Job


class ConvertRequest(_Wire):
    """POST /llamalab/convert: convert a checkpoint folder on the server to GGUF (and quantize it)
    into the store, in the background."""

    source: str = Field(min_length=1, max_length=4096,
                        description="a folder on the server: a Meta checkpoint (consolidated.*.pth, params.json, "
                                    "tokenizer.model) or a Hugging Face model folder")
    quant: Optional[str] = Field(None, min_length=1, max_length=32, description='e.g. "Q4_K_M"; None keeps f16')
    name: Optional[str] = Field(None, min_length=1, max_length=200, description="the store name; None: derived")
    accept_license: bool = False


class QuantizeRequest(_Wire):
    """POST /llamalab/quantize: quantize a stored model into a new stored model, in the background."""

    model: str = Field(min_length=1, max_length=1000, description="a stored model's name")
    quant: str = Field(min_length=1, max_length=32, description='e.g. "Q4_K_M"')
    name: Optional[str] = Field(None, min_length=1, max_length=200, description="the store name; None: derived")


# -- inline completion (POST /llamalab/complete) -------------------------------------------
class NotebookCell(_Wire):
    """One notebook cell around the cursor's: its id (JupyterLab's cell id), text and kind."""

    id: str = Field(max_length=128)
    source: str = ""
    kind: Literal["code", "markdown", "raw"] = "code"


class KernelRef(_Wire):
    """The notebook's running kernel, whose defined names may go into the prompt."""

    id: str = Field(max_length=128, description="the kernel's id (from /api/kernels)")
    execution_count: int = Field(0, ge=0, description="the notebook's latest execution count; when it changes, "
                                                       "the kernel's names are read again")


class CompletionRequest(_Wire):
    """Complete the code at a cursor: ``prefix`` is the text before it, ``suffix`` after it.
    Fill-in-the-middle is used when the model has FIM tokens (Code Llama), else the prefix alone.

    A notebook sends its cells (``cells``, with the cursor's cell at ``cell_index``; that cell's
    own text is ``prefix + suffix``), so the server can lay the prompt out cell by cell and keep
    its start while the user types. A plain client may send the whole text above and below the
    cursor as ``prefix`` and ``suffix``; ``path`` then names the document, so the server keeps
    the same window start between its requests."""

    prefix: str
    suffix: str = ""
    cells: Optional[list[NotebookCell]] = Field(
        None, max_length=20000, description="a notebook's cells in order, the cursor's at cell_index")
    cell_index: Optional[int] = Field(None, ge=0, description="the cursor's cell in cells")
    kernel: Optional[KernelRef] = Field(None, description="the notebook's kernel, for its variables and functions")
    warm: bool = Field(False, description="only read the prompt into the model's cache (a cell was entered, the "
                                          "user paused); the reply's text is empty")
    explain: bool = Field(False, description="include the prompt as text in the reply (for debugging and tests)")

    @model_validator(mode="after")
    def _cell_index_names_a_cell(self) -> "CompletionRequest":
        if self.cells is not None and (self.cell_index is None or self.cell_index >= len(self.cells)):
            raise ValueError(f"cell_index must name one of the {len(self.cells)} cells sent (counting from 0)")
        return self
    language: Optional[str] = Field(None, max_length=64, description='e.g. "python"')
    path: Optional[str] = Field(None, max_length=4096, description="the document's path, for context")
    model: Optional[str] = Field(None, description="a model name; omitted: the server's current model")
    max_tokens: Optional[int] = Field(None, ge=1, description="capped by the server's max_tokens_limit; default 64")
    mode: Literal["auto", "single", "multi"] = Field(
        "auto", description="single: one line; multi: a block; auto: single in the middle of a line")
    stream: bool = Field(False, description="answer server-sent CompletionChunk events, then the CompletionReply")


class CompletionChunk(_Wire):
    """A streamed completion so far: ``text`` is the whole post-processed suggestion, not a delta."""

    type: Literal["completion_chunk"] = "completion_chunk"
    text: str


class CompletionReply(_Wire):
    type: Literal["completion"] = "completion"
    text: str = Field(description="the post-processed suggestion to insert at the cursor; may be empty")
    fim: bool = Field(description="whether fill-in-the-middle was used")
    model: str
    finish_reason: Literal["stop", "length", "cancelled"]
    usage: Usage
    prompt: Optional[str] = Field(None, description="the prompt as text, when the request asked to explain")


class GPUInfo(_Wire):
    index: int
    name: str
    total_bytes: int
    free_bytes: int


class ModelFitInfo(_Wire):
    name: str
    quantization: str
    file_bytes: int
    needed_bytes: int
    n_gpu_layers: int
    total_layers: int
    fits_fully: bool
    problem: Optional[str] = None


class HardwareReply(_Wire):
    """The ``llamalab doctor`` report as JSON, plus its text form."""

    type: Literal["hardware"] = "hardware"
    llamalab_version: str
    llama_cpp_version: Optional[str]
    gpu_offload_supported: bool
    system_info: str
    gpus: list[GPUInfo]
    n_ctx: int
    store_root: str
    models: list[ModelFitInfo]
    notices: list[str]
    kv_size: Optional[int] = None  # KV cache cells shared by the slots; None: n_ctx
    remote: list[str] = Field(default_factory=list,
                              description="the notices about the remote server (remote_url), also in notices")
    text: str


class SettingsReply(_Wire):
    type: Literal["settings"] = "settings"
    default_model: str
    n_ctx: int
    n_gpu_layers: Union[int, Literal["auto"]]
    system_prompt: str
    remote_url: Optional[str] = None
    remote_api_key_set: bool = False
    allowed_models: list[str]
    max_queued: int
    max_prompt_chars: int
    max_tokens_limit: int
    store_root: str
    kernel_access: bool


class SettingsUpdate(_Wire):
    """PATCH /llamalab/settings: what a user may change at run time. Changing the model or
    how it is loaded unloads the current one; the next request loads the new one. The
    remote server, allowed models and limits are the administrator's (traitlets config)."""

    default_model: Optional[str] = None
    n_ctx: Optional[int] = Field(None, ge=128, le=1_048_576)
    n_gpu_layers: Optional[Union[int, Literal["auto"]]] = None
    system_prompt: Optional[str] = Field(None, max_length=100_000)


# -- conversations (REST /llamalab/conversations, kept as files by ``conversations``) ------------
CONVERSATION_VERSION = 1  # the version of a conversation file's format


class TurnUsage(_Wire):
    """``Usage`` of a stored answer (every field required, so that it reads and writes alike)."""

    prompt_tokens: int
    completion_tokens: int
    dropped_messages: int
    time_to_first_token_s: Optional[float]
    duration_s: float
    reused_prompt_tokens: Optional[int]


class ConversationEntry(_Wire):
    """One message of a stored conversation as the chat panel shows it: a user message (``sent``:
    what went to the model when it differs), an answer, or an error line."""

    id: str = Field(min_length=1, max_length=128, description="the chat request's id (a message and its answer share it)")
    role: Literal["user", "assistant", "error"]
    content: str
    sent: Optional[str] = None
    context: Optional[list[str]] = None
    finish_reason: Optional[Literal["stop", "length", "cancelled"]] = None
    notice: Optional[str] = None
    model: Optional[str] = Field(None, max_length=1000)
    usage: Optional[TurnUsage] = None
    code: Optional[str] = Field(None, max_length=64)
    detail: Optional[Any] = None
    time: float = Field(0, description="ms since the epoch, as the browser counts")


class StoredConversation(_Wire):
    """A stored conversation, as its file holds it and GET /llamalab/conversations/{id} answers.
    ``revision`` grows at every write: a PUT or PATCH naming an older one gets 409 ``conflict``."""

    type: Literal["conversation"] = "conversation"
    version: int = CONVERSATION_VERSION
    id: str
    name: str = Field(description="the title shown in the conversation picker")
    system: Optional[str] = None
    created: float
    updated: float
    revision: int
    entries: list[ConversationEntry]


class ConversationSummary(_Wire):
    id: str
    name: str = Field(description="the title shown in the conversation picker")
    created: float
    updated: float
    revision: int
    messages: int = Field(description="entries in the conversation")


class ConversationProblem(_Wire):
    """A conversation file that could not be read: set aside (renamed), never deleted."""

    file: str = Field(description="the file's name as found")
    set_aside_as: Optional[str] = Field(None, description="the name it was renamed to, in the same folder")
    message: str


class ConversationList(_Wire):
    type: Literal["conversations"] = "conversations"
    conversations: list[ConversationSummary] = Field(description="newest first")
    problems: list[ConversationProblem]
    folder: str
    max_conversations: int
    max_conversation_bytes: int


class ConversationCreate(_Wire):
    """POST /llamalab/conversations (and each item of an import): a new conversation; ``id`` chosen by
    the client (letters, digits, ``_`` and ``-``) or, omitted, by the server."""

    id: Optional[str] = Field(None, min_length=1, max_length=128)
    name: str = Field("New conversation", max_length=500, description="the title shown in the picker")
    system: Optional[str] = None
    entries: list[ConversationEntry] = Field(default_factory=list)
    created: Optional[float] = None
    updated: Optional[float] = None


class ConversationUpdate(_Wire):
    """PUT /llamalab/conversations/{id}: replace a conversation, from the ``revision`` last read."""

    revision: int = Field(ge=0)
    name: str = Field(max_length=500)
    system: Optional[str] = None
    entries: list[ConversationEntry]


class ConversationPatch(_Wire):
    """PATCH /llamalab/conversations/{id}: rename it or change its system prompt; with ``revision``,
    only if nothing changed since."""

    revision: Optional[int] = Field(None, ge=0)
    name: Optional[str] = Field(None, min_length=1, max_length=500, description="the new title")
    system: Optional[str] = None
    clear_system: bool = Field(False, description="set the system prompt back to the server's default")


class ConversationImport(_Wire):
    """POST /llamalab/conversations/import: the browser's earlier conversations; ids the server
    already has are skipped (an import sent twice changes nothing)."""

    conversations: list[ConversationCreate] = Field(max_length=200)


class ImportSkip(_Wire):
    id: Optional[str] = None
    reason: str


class ImportReply(_Wire):
    type: Literal["imported"] = "imported"
    imported: list[str]
    skipped: list[ImportSkip]


class ConversationChangedMessage(_Wire):
    """Pushed to every chat WebSocket when a conversation was written or deleted (by a turn that ended,
    or through REST, from any tab): clients GET it again when ``revision`` is newer than theirs."""

    type: Literal["conversation_changed"] = "conversation_changed"
    conversation_id: str
    revision: Optional[int] = Field(None, description="None: deleted")
    deleted: bool = False


ServerMessage = Annotated[
    Union[HelloMessage, TokenMessage, DoneMessage, AckMessage, HistoryMessage, ErrorMessage,
          ModelChangedMessage, JobProgressMessage, ConversationChangedMessage],
    Field(discriminator="type"),
]

REST_REQUESTS: tuple[type[BaseModel], ...] = (LoadRequest, PullRequest, ConvertRequest, QuantizeRequest,
                                               CompletionRequest, SettingsUpdate, ConversationCreate,
                                               ConversationUpdate, ConversationPatch, ConversationImport)
REST_REPLIES: tuple[type[BaseModel], ...] = (
    ModelsReply, LoadedModel, UnloadReply, Job, JobList, JobProgressMessage, CompletionChunk, CompletionReply,
    HardwareReply, SettingsReply, ErrorMessage, StoredConversation, ConversationList, ImportReply,
)
