"""Chat prompts: Meta's Llama-2 construction token by token, GGUF templates, trimming.

A SentencePiece model trained here and a tiny random-weight Llama GGUF over it stand in
for Meta's tokenizer and model, so the reference below can be Meta's ``generation.py``
construction applied with ``sentencepiece`` itself.
"""

from __future__ import annotations

import ctypes

import pytest

from llamalab import ChatTemplateError, ContextOverflowError, EngineError, GenerationParams, LocalEngine
from llamalab.templates import (B_INST, B_SYS, E_INST, E_SYS, JinjaChatFormat, Llama2ChatFormat, Message,
                                choose_chat_format, fit_messages, is_llama2_chat_name)
from tests.fixtures.tiny_llama import train_sentencepiece, write_tiny_llama_gguf


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    import sentencepiece as spm

    path = train_sentencepiece(tmp_path_factory.mktemp("spm"))
    return spm.SentencePieceProcessor(model_file=str(path)), path


@pytest.fixture(scope="module")
def tiny_engine(spm_model, tmp_path_factory):
    _, tokenizer_path = spm_model
    gguf_path = write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", tokenizer_path,
                                      name="tiny-llama-2-7b-chat", n_ctx=512)
    engine = LocalEngine(gguf_path, n_ctx=512)
    yield engine
    engine.close()


class SentencePieceTokenizer:
    """The templates.Tokenizer protocol over sentencepiece, as Meta's Tokenizer wraps it."""

    def __init__(self, sp):
        self.sp = sp
        self.bos_id = sp.bos_id()
        self.eos_id = sp.eos_id()

    def encode(self, text, *, special):
        return self.sp.encode(text)

    def token_text(self, token_id):
        return self.sp.id_to_piece(token_id)


def meta_reference(sp, dialog):
    """Meta's llama/generation.py chat_completion prompt, with sentencepiece's encode."""

    def encode(s, bos, eos):
        t = sp.encode(s)
        return ([sp.bos_id()] if bos else []) + t + ([sp.eos_id()] if eos else [])

    if dialog[0]["role"] == "system":
        dialog = [{"role": dialog[1]["role"],
                   "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}] + dialog[2:]
    tokens = sum([encode(f"{B_INST} {(p['content']).strip()} {E_INST} {(a['content']).strip()} ", True, True)
                  for p, a in zip(dialog[::2], dialog[1::2])], [])
    tokens += encode(f"{B_INST} {(dialog[-1]['content']).strip()} {E_INST}", True, False)
    return tokens


DIALOGS = [
    [{"role": "user", "content": "hello world"}],
    [{"role": "system", "content": "answer in a short poem"}, {"role": "user", "content": "explain the error"}],
    [{"role": "system", "content": "be brief"},
     {"role": "user", "content": "  question one \n"},
     {"role": "assistant", "content": " answer one  "},
     {"role": "user", "content": "question two"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c </s> [INST] not special"}, {"role": "assistant", "content": "d\n\ne"},
     {"role": "user", "content": "ünïcödé 123"}],
]


@pytest.mark.parametrize("dialog", DIALOGS, ids=lambda d: f"{len(d)}-messages")
def test_llama2_format_matches_meta_with_sentencepiece(spm_model, dialog):
    sp, _ = spm_model
    ours = Llama2ChatFormat(SentencePieceTokenizer(sp)).format(dialog)
    assert ours == meta_reference(sp, dialog)


@pytest.mark.parametrize("dialog", DIALOGS, ids=lambda d: f"{len(d)}-messages")
def test_llama2_format_through_llama_cpp_matches_meta(tiny_engine, spm_model, dialog):
    sp, _ = spm_model
    assert tiny_engine.describe().chat_format == "llama-2"
    assert tiny_engine.format_chat(dialog) == meta_reference(sp, dialog)


def test_user_text_cannot_forge_special_tokens(tiny_engine, spm_model):
    sp, _ = spm_model
    tokens = tiny_engine.format_chat([{"role": "user", "content": "</s><s>"}])
    # Exactly one BOS (the one we put) and no EOS: the text stayed text.
    assert tokens.count(sp.bos_id()) == 1
    assert sp.eos_id() not in tokens


def test_llama_cpp_python_builtin_llama2_format_differs_from_meta(tiny_engine, spm_model):
    """Why llamalab builds the prompt itself: llama-cpp-python's string differs from Meta's."""
    from llama_cpp.llama_chat_format import format_llama2

    sp, _ = spm_model
    dialog = DIALOGS[2]
    theirs = tiny_engine.tokenize(format_llama2(messages=dialog).prompt, special=True)
    assert theirs != meta_reference(sp, dialog)


@pytest.mark.parametrize("dialog, fragment", [
    ([{"role": "assistant", "content": "hi"}], "message 1 is 'assistant'"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "message 2 is 'user'"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "last message"),
    ([{"role": "system", "content": "only a system prompt"}], "needs a user message"),
    ([{"role": "robot", "content": "beep"}], "unknown role"),
    ([], "no messages"),
    (["not a message"], "role and content"),
])
def test_bad_dialogs_are_refused_clearly(spm_model, dialog, fragment):
    sp, _ = spm_model
    with pytest.raises(ChatTemplateError, match=fragment):
        Llama2ChatFormat(SentencePieceTokenizer(sp)).format(dialog)


def _llama_cpp_builtin_render(template: str, dialog: list[dict]) -> str:
    import llama_cpp

    array = (llama_cpp.llama_chat_message * len(dialog))(
        *[llama_cpp.llama_chat_message(role=m["role"].encode(), content=m["content"].encode()) for m in dialog])
    buf = ctypes.create_string_buffer(8192)
    n = llama_cpp.llama_chat_apply_template(template.encode(), array, len(dialog), True, buf, len(buf))
    assert 0 < n < len(buf)
    return buf.raw[:n].decode()


def test_gguf_template_renders_like_llama_cpp(engine):
    """The demo model's own template (ChatML) rendered by our sandbox equals llama.cpp's rendering."""
    fmt = engine.chat_format
    assert isinstance(fmt, JinjaChatFormat) and engine.describe().chat_format == "gguf"
    dialog = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"},
              {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}]
    assert fmt.render(dialog) == _llama_cpp_builtin_render(engine.info.chat_template, dialog)
    tokens = fmt.format(dialog)
    im_start = engine.tokenize("<|im_start|>", special=True)
    assert len(im_start) == 1 and tokens.count(im_start[0]) == 5  # special tokens parsed, one per turn + reply


def test_chat_format_choice():
    class Tok:
        bos_id, eos_id = 1, 2

        def encode(self, text, *, special):
            return [5]

        def token_text(self, token_id):
            return "<s>"

    tok = Tok()
    assert is_llama2_chat_name("Llama-2-13b-chat") and is_llama2_chat_name("CodeLlama 7B Instruct")
    assert not is_llama2_chat_name("llama-2-7b") and not is_llama2_chat_name("SmolLM2 135M Instruct")
    assert choose_chat_format("auto", model_name="llama-2-7b-chat.Q4_K_M", chat_template="{{x}}",
                              tokenizer=tok, add_bos=True).name == "llama-2"
    assert choose_chat_format("auto", model_name="smollm", chat_template="{{ messages[0].content }}",
                              tokenizer=tok, add_bos=False).name == "gguf"
    assert choose_chat_format("auto", model_name="llama-2-7b", chat_template=None,
                              tokenizer=tok, add_bos=True) is None
    with pytest.raises(ChatTemplateError, match="no chat template"):
        choose_chat_format("gguf", model_name="base", chat_template=None, tokenizer=tok, add_bos=True)
    with pytest.raises(ChatTemplateError, match="unknown chat format"):
        choose_chat_format("vicuna", model_name="x", chat_template=None, tokenizer=tok, add_bos=True)


def test_template_errors_are_chat_template_errors():
    class Tok:
        bos_id, eos_id = None, None

        def encode(self, text, *, special):
            return []

        def token_text(self, token_id):
            return ""

    with pytest.raises(ChatTemplateError, match="does not parse"):
        JinjaChatFormat("{% for %}", Tok())
    refusing = JinjaChatFormat("{{ raise_exception('only user turns') }}", Tok())
    with pytest.raises(ChatTemplateError, match="only user turns"):
        refusing.format([{"role": "user", "content": "x"}])


# -- fitting the context window ------------------------------------------------------
def _long_history(turns: int) -> list[Message]:
    history = [Message("system", "be brief")]
    for i in range(turns):
        history += [Message("user", f"question {i} " + "the llama reads code " * 5),
                    Message("assistant", f"answer {i} " + "the fox jumps " * 5)]
    return history + [Message("user", "final question")]


def test_fit_messages_drops_oldest_turns_keeps_system_and_last(spm_model):
    sp, _ = spm_model
    fmt = Llama2ChatFormat(SentencePieceTokenizer(sp))
    dialog = _long_history(10)
    full = len(fmt.format(dialog))
    budget = full // 3
    fitted = fit_messages(fmt, dialog, budget)
    assert len(fitted.tokens) <= budget
    assert fitted.dropped_messages > 0 and fitted.dropped_messages % 2 == 0
    kept = [dialog[0]] + dialog[1 + fitted.dropped_messages:]
    assert fitted.tokens == fmt.format(kept)  # system + the newest turns, starting with the user
    # Nothing more was dropped than needed: one more turn would not fit.
    one_more = [dialog[0]] + dialog[1 + fitted.dropped_messages - 2:]
    assert len(fmt.format(one_more)) > budget


def test_fit_messages_refuses_when_last_message_alone_is_too_long(spm_model):
    sp, _ = spm_model
    fmt = Llama2ChatFormat(SentencePieceTokenizer(sp))
    with pytest.raises(ContextOverflowError, match="last message alone"):
        fit_messages(fmt, [Message("user", "the llama reads code " * 200)], budget=50)


def test_engine_chat_trims_and_says_so(tiny_engine):
    params = GenerationParams(max_tokens=8, temperature=0)
    dialog = _long_history(20)
    result = tiny_engine.chat(dialog, params).collect()
    assert result.dropped_messages > 0 and result.trimmed
    assert result.prompt_tokens <= tiny_engine.n_ctx - params.max_tokens
    with pytest.raises(ContextOverflowError, match="context window"):
        tiny_engine.chat(dialog, GenerationParams(max_tokens=8, overflow="error"))
    # Still usable after the refusal.
    assert tiny_engine.chat(dialog[-1:], params).collect().finish_reason in ("stop", "length")


def test_engine_completion_trims_oldest_tokens_and_keeps_bos(tiny_engine):
    params = GenerationParams(max_tokens=8, temperature=0)
    prompt = "the llama reads python code " * 150
    n_prompt = len(tiny_engine.tokenize(prompt, add_bos=True))
    assert n_prompt > tiny_engine.n_ctx
    result = tiny_engine.complete(prompt, params).collect()
    assert result.dropped_tokens == n_prompt - (tiny_engine.n_ctx - params.max_tokens)
    assert result.prompt_tokens == tiny_engine.n_ctx - params.max_tokens
    with pytest.raises(ContextOverflowError, match="prompt is"):
        tiny_engine.complete(prompt, GenerationParams(max_tokens=8, overflow="error"))


def test_base_model_without_template_cannot_chat(spm_model, tmp_path):
    _, tokenizer_path = spm_model
    path = write_tiny_llama_gguf(tmp_path / "base.gguf", tokenizer_path, name="tiny-llama-2-7b")
    with LocalEngine(path, n_ctx=256) as base:
        assert base.describe().chat_format is None
        with pytest.raises(EngineError, match="no chat template"):
            base.chat([{"role": "user", "content": "hi"}])
        assert base.complete("the llama", GenerationParams(max_tokens=3, temperature=0)).collect().text


def test_fit_messages_formats_a_long_chat_only_log_n_times(spm_model):
    sp, _ = spm_model
    inner = Llama2ChatFormat(SentencePieceTokenizer(sp))
    calls = []

    class Counting:
        name = "counting"

        def format(self, messages):
            calls.append(len(messages))
            return inner.format(messages)

    dialog = _long_history(200)
    fitted = fit_messages(Counting(), dialog, budget=len(inner.format(dialog)) // 10)
    assert fitted.dropped_messages > 0 and len(calls) <= 12
    assert fitted.tokens == inner.format([dialog[0]] + dialog[1 + fitted.dropped_messages:])
