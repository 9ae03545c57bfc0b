"""The prompt is the reference's training text byte for byte (issue #14 item 2).

Every expected string below is written out literally from the reference code
(sssth/Self-Optimized-Fine-Tuning@69d5a85: train.py `generate_prompt` lines 302-311, process.py
`construct_instruction` lines 84-95), never built from softrec's own constants.
"""

from __future__ import annotations

from conftest import shared_dataset

from softrec.cli import main
from softrec.data.dataset import Domain
from softrec.data.prompts import build_prompt, response_text, strip_response

REFERENCE_GAMES = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request. \n\n"
    "### Instruction:\n"
    "Given a list of video games the user has played before, please recommend a new video game that the "
    "user likes to the user.\n\n"
    "### Input:\n"
    'The user has played the following video games before: "Halo 3", "Portal 2"\n \n\n'
    "### Response:\n"
)


def test_alpaca_prompt_is_the_reference_training_text():
    domain = Domain("video game", "video games", "played")
    assert build_prompt(["Halo 3", "Portal 2"], domain) == REFERENCE_GAMES
    assert build_prompt(["Halo 3", "Portal 2"], domain) + response_text("Zelda") == REFERENCE_GAMES + '"Zelda"'


def test_data_prompt_prints_prompt_response_and_end_marker(tiny_dataset, capsys):
    sample = tiny_dataset.split("train")[2]
    titles = tiny_dataset.titles
    history = ", ".join(f'"{titles[i]}"' for i in sample.history)
    expected = (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request. \n\n### Instruction:\n"
        "Given a list of books the user has read before, please recommend a new book that the user likes to "
        f"the user.\n\n### Input:\nThe user has read the following books before: {history}\n \n\n"
        f'### Response:\n"{titles[sample.target]}"<eos>\n'
    )
    assert main(["data", "prompt", str(tiny_dataset.path), "--split", "train", "--index", "2"]) == 0
    assert capsys.readouterr().out == expected
    # with a tokenizer: the model's own tokens decoded (tiny has no BOS; its end token is <eos>)
    assert main(["data", "prompt", str(tiny_dataset.path), "--index", "2", "--model", "tiny"]) == 0
    assert capsys.readouterr().out == expected
    assert main(["data", "prompt", str(tiny_dataset.path), "--index", "99"]) == 2


def test_data_prompt_on_a_shared_dataset_has_the_reference_header(tmp_path, capsys):
    source = shared_dataset("amazon-books")
    out = tmp_path / "books"
    assert main(["data", "prepare", "--dataset", str(source), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["data", "prompt", str(out), "--split", "train", "--index", "0"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request. \n\n### Instruction:\n"
        "Given a list of books the user has read before, please recommend a new book that the user likes to "
        "the user.\n\n### Input:\nThe user has read the following books before: \""
    )
    assert '"\n \n\n### Response:\n"' in text and text.endswith('"<eos>\n')


def test_response_rules():
    run_on = '"A House for Mr. Biswas"\n"A House for Mr. Biswas"\n"'
    # reference (evaluate_batch.py line 88): .strip('"').strip(" ") on the whole generation
    assert strip_response(run_on) == 'A House for Mr. Biswas"\n"A House for Mr. Biswas"\n'
    assert strip_response('"Dune"') == "Dune"
    assert strip_response('"Dune" ') == 'Dune"'  # the reference's order: quotes first, then spaces
    assert strip_response(run_on, "first-line") == "A House for Mr. Biswas"


def test_a_prompt_change_makes_trainings_stale(monkeypatch, tiny_dataset):
    from softrec.config import Config
    from softrec.data import prompts
    from softrec.training.trainer import training_key

    before = training_key(Config(), tiny_dataset, None)
    monkeypatch.setattr(prompts, "ALPACA_HEADER", prompts.ALPACA_HEADER.replace("context. ", "context.\n"))
    assert training_key(Config(), tiny_dataset, None) != before
