"""A tiny random causal LM and a tokenizer built in code, for tests: no download, ms per step.

Both are deterministic: the same call gives the same tokenizer and the same initial weights, so a
run directory that names `tiny` as its base model can be reloaded exactly in another process.
"""

from __future__ import annotations

import string
from functools import lru_cache

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from softrec.data.prompts import ALPACA_HEADER

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]

_CORPUS = [
    ALPACA_HEADER,
    "### Instruction:\nGiven a list of items the user has interacted with before, please recommend "
    "a new item that the user likes to the user.\n\n### Input:\nThe user has interacted with the "
    'following items before: "The Hobbit", "Dune", "Emma"\n\n### Response:\n"The Silmarillion"',
    string.ascii_letters + string.digits + string.punctuation + " \n",
    "the of and a to in is you that it he was for on are as with his they at be this have from "
    "game games book books movie movies film series part volume edition collection story king war",
]


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
    )
    tokenizer.padding_side = "left"
    return tokenizer


def tiny_model(vocab_size: int | None = None, seed: int = 0) -> LlamaForCausalLM:
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


def load_tiny() -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    return tiny_model(), tiny_tokenizer()
