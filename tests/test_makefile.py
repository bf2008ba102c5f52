"""The Makefile as users run it: free text reaches the program untouched, variables become the right flags,
`make clean` leaves exports alone. `make` runs for real, with VENV= pointing at a stub python that prints
the arguments it gets (or at a wrapper of this python, for one real `make generate`)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt.checkpoint import save_model
from gpt.model import GPT, preset

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def venv(tmp_path: Path, script: str) -> Path:
    """A folder standing for .venv: bin/python runs `script` (sh), and the setup stamp is fresh."""
    folder = tmp_path / "venv"
    (folder / "bin").mkdir(parents=True)
    python = folder / "bin" / "python"
    python.write_text(f"#!/bin/sh\n{script}\n")
    python.chmod(0o755)
    (folder / ".installed").touch()  # newer than requirements.lock and pyproject.toml: no setup runs
    return folder


@pytest.fixture()
def stub(tmp_path):
    """`make` whose python prints its argv as JSON: returns that argv."""
    folder = venv(tmp_path, f'exec {sys.executable} -c "import json, sys; print(json.dumps(sys.argv[1:]))" "$@"')

    def make(*args, env=None):
        proc = subprocess.run(["make", "-s", "--no-print-directory", *args, f"VENV={folder}"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    return make


PROMPTS = ['He said "hi" to me', "It costs $HOME `id` today", "$$ $(shell id) ${HOME} $(PROMPT) %s \\n",
           "$(shell touch TMP/hacked) `touch TMP/hacked`", "two\nlines", "café, naïve, 日本語 🙂", "-starts like a flag",
           "it's 'quoted'; echo no", "back\\slash\\"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_prompt_reaches_generate_untouched(stub, prompt, tmp_path):
    prompt = prompt.replace("TMP", str(tmp_path))
    argv = stub("generate", f"PROMPT={prompt}", "CKPT=some/ckpt")
    assert argv[:3] == ["-m", "gpt", "generate"] and argv[-1] == f"--prompt={prompt}"
    assert stub("generate", env={"PROMPT": prompt})[-1] == f"--prompt={prompt}"  # from the environment too
    assert stub("pretrain", f"PROMPT={prompt}")[:3] == ["-m", "train", "pretrain"]  # make exports it to every recipe
    assert not (tmp_path / "hacked").exists()


def test_default_prompt(stub):
    assert stub("generate")[-1] == "--prompt=Give three tips for staying healthy."


def test_make_generate_prints_the_completion_of_the_prompt_as_typed(tmp_path):
    torch.manual_seed(0)
    ckpt = save_model(GPT(preset("nano")), tmp_path / "nano")
    folder = venv(tmp_path, f'exec {sys.executable} "$@"')
    prompt = f"It costs $HOME `touch {tmp_path}/hacked` \"today\"\nà 日本"
    proc = subprocess.run(["make", "-s", "--no-print-directory", "generate", f"VENV={folder}", f"CKPT={ckpt}",
                           "MAX_STEPS=2", f"PROMPT={prompt}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert f"prompt 1: {prompt}\n" in proc.stdout  # the prompt as the program got it
    assert not (tmp_path / "hacked").exists()


def test_source_selects_the_custom_dataset_for_pretraining(stub):
    argv = stub("pretrain", "SOURCE=my/texts")
    assert argv[argv.index("--dataset") + 1] == "custom"
    assert argv[argv.index("--run-dir") + 1] == "runs/custom/pretrain"
    argv = stub("pretrain")
    assert argv[argv.index("--dataset") + 1] == "sample" and argv[argv.index("--run-dir") + 1] == "runs/sample/pretrain"
    argv = stub("sft", "SOURCE=my/texts")  # SFT continues from that pretraining run
    assert argv[argv.index("--pretrain-run") + 1] == "runs/custom/pretrain"


def test_preference_shards_follow_the_dataset_and_take_source(stub):
    argv = stub("pref-shards")
    assert argv[:3] == ["-m", "pipelines", "prefs"] and argv[argv.index("--dataset") + 1] == "sample"
    assert "--source" not in argv
    argv = stub("pref-shards", "DATASET=fineweb10B")
    assert argv[argv.index("--dataset") + 1] == "ultrafeedback"
    argv = stub("pref-shards", "SOURCE=my/pairs.jsonl", "DATA_DIR=d")
    assert argv[argv.index("--source") + 1] == "my/pairs.jsonl" and argv[argv.index("--data-dir") + 1] == "d"


# Each preference stage's own variables: (make variable, flag, value) beside the shared BATCH_PAIRS and INIT
PREF_STAGE_VARIABLES = {
    "dpo": (("DPO_RECIPE", "--recipe", "ultrafeedback"), ("BETA", "--beta", "0.05"),
            ("LABEL_SMOOTHING", "--label-smoothing", "0.1")),
    "rm": (("RM_RECIPE", "--recipe", "ultrafeedback"), ("MARGIN", "--margin", "0.5"),
           ("CENTER_COEF", "--center-coef", "0.01")),
}


@pytest.mark.parametrize("target", PREF_STAGE_VARIABLES)
def test_a_preference_stage_starts_from_the_sft_run_on_the_preference_data(stub, target):
    own = PREF_STAGE_VARIABLES[target]
    flags = (*(flag for _, flag, _ in own), "--batch-pairs", "--init")
    argv = stub(target)
    assert argv[:3] == ["-m", "train", target] and argv[argv.index("--dataset") + 1] == "sample"
    assert argv[argv.index("--sft-run") + 1] == "runs/sample/sft"
    assert argv[argv.index("--run-dir") + 1] == f"runs/sample/{target}"
    assert not set(flags) & set(argv)
    argv = stub(target, "DATASET=fineweb10B", *(f"{name}={value}" for name, _, value in own), "BATCH_PAIRS=32",
                "INIT=runs/x/sft")
    assert argv[argv.index("--dataset") + 1] == "ultrafeedback"
    assert argv[argv.index("--sft-run") + 1] == "runs/fineweb10B/sft"
    assert [argv[argv.index(f) + 1] for f in flags] == [*(value for _, _, value in own), "32", "runs/x/sft"]


def test_rl_starts_from_the_sft_run_with_the_reward_asked_for(stub):
    argv = stub("rl")
    assert argv[:3] == ["-m", "train", "rl"] and argv[argv.index("--reward") + 1] == "arithmetic"
    assert argv[argv.index("--dataset") + 1] == "sample" and argv[argv.index("--sft-run") + 1] == "runs/sample/sft"
    assert argv[argv.index("--run-dir") + 1] == "runs/sample/rl"
    assert not {"--recipe", "--group", "--max-new", "--kl-beta", "--updates", "--batch-prompts", "--init"} & set(argv)
    argv = stub("rl", "REWARD=gsm8k", "RUN_DIR=runs/gsm8k", "GROUP=16", "MAX_NEW=128", "KL_BETA=0.04", "UPDATES=2",
                "BATCH_PROMPTS=32", "RL_RECIPE=gsm8k")
    assert argv[argv.index("--dataset") + 1] == "gsm8k" and argv[argv.index("--sft-run") + 1] == "runs/gsm8k/sft"
    flags = ("--group", "--max-new", "--kl-beta", "--updates", "--batch-prompts", "--recipe")
    assert [argv[argv.index(f) + 1] for f in flags] == ["16", "128", "0.04", "2", "32", "gsm8k"]
    argv = stub("rl", "REWARD=rm:runs/x/rm", "DATASET=fineweb10B")
    assert argv[argv.index("--reward") + 1] == "rm:runs/x/rm" and argv[argv.index("--dataset") + 1] == "ultrafeedback"
    assert argv[argv.index("--prompts") + 1] == "prefs"
    argv = stub("rl", "REWARD=rm:runs/x/rm", "RL_PROMPTS=sft", "DATASET=fineweb10B")  # the SFT shards' prompts
    assert argv[argv.index("--prompts") + 1] == "sft" and argv[argv.index("--dataset") + 1] == "alpaca"


@pytest.mark.parametrize("target", ["pretrain", "sft", "dpo", "rm", "rl"])
def test_verify_and_extend_variables(stub, target):
    assert "--no-verify-data" not in stub(target) and "--extend" not in stub(target)
    argv = stub(target, "VERIFY=0", "EXTEND=1", "RESUME=1", "STEPS=9")
    assert {"--no-verify-data", "--extend", "--resume"} <= set(argv) and argv[argv.index("--steps") + 1] == "9"


def make_fails(tmp_path, *args) -> str:
    """`make -n` of `args` that stops before running anything: its error message."""
    folder = tmp_path / "fails" / "venv"
    if not folder.exists():
        venv(tmp_path / "fails", "exit 1")
    proc = subprocess.run(["make", "-n", "--no-print-directory", *args, f"VENV={folder}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and not proc.stdout, proc.stdout
    return proc.stderr


@pytest.mark.parametrize("variable, flag", [("COMPILE", "--compile"), ("RESUME", "--resume"), ("EXTEND", "--extend")])
def test_yes_no_variables_take_any_case_and_refuse_what_they_do_not_understand(stub, tmp_path, variable, flag):
    """COMPILE=True (or TRUE) was ignored, as was any value but 1, yes and true, silently: the case variants of
    1/yes/true/on and 0/no/false/off are understood, and anything else stops make, naming the variable."""
    for value in ("1", "yes", "True", "TRUE", "On"):
        assert flag in stub("pretrain", f"{variable}={value}")
    for value in ("0", "no", "False", "OFF", ""):
        assert flag not in stub("pretrain", f"{variable}={value}")
    for value in ("maybe", "2", "yes please"):
        assert (f"{variable}={value} is not understood: a yes/no variable takes 1, yes, true or on, or 0, no, false "
                f"or off") in make_fails(tmp_path, "pretrain", f"{variable}={value}")


def test_verify_takes_any_case_and_refuses_what_it_does_not_understand(stub, tmp_path):
    for value in ("0", "No", "FALSE", "off"):
        assert "--no-verify-data" in stub("sft", f"VERIFY={value}")
    for value in ("1", "Yes", "TRUE", ""):
        assert "--no-verify-data" not in stub("sft", f"VERIFY={value}")
    assert "VERIFY=nope is not understood" in make_fails(tmp_path, "sft", "VERIFY=nope")


def test_a_node_other_than_node_0_needs_master_addr(stub, tmp_path):
    """NNODES=2 NODE_RANK=1 without MASTER_ADDR gave torchrun 127.0.0.1, the node itself: it waited for node 0 until
    torchrun's timeout. It now stops at once, asking for MASTER_ADDR."""
    assert ("NODE_RANK=1 of NNODES=2: set MASTER_ADDR to the address of node 0 (NODE_RANK=0), which every node "
            "reaches") in make_fails(tmp_path, "pretrain", "NGPU=8", "NNODES=2", "NODE_RANK=1")
    argv = stub("pretrain", "NGPU=8", "NNODES=2", "NODE_RANK=1", "MASTER_ADDR=node0")
    assert argv[:3] == ["-m", "torch.distributed.run", "--shutdown-timeout=300"]
    assert {"--nnodes=2", "--node_rank=1", "--master_addr=node0"} <= set(argv)
    argv = stub("sft", "NGPU=8", "NNODES=2", "NODE_RANK=1", env={"MASTER_ADDR": "node0"})  # from the environment
    assert "--master_addr=node0" in argv
    assert "--master_addr=127.0.0.1" in stub("pretrain", "NGPU=8", "NNODES=2", "NODE_RANK=0")  # node 0 is the master


@pytest.mark.parametrize("target, args, command", [("inspect", "--decode 5", ["-m", "shards", "inspect", "data"]),
                                                    ("test", "-k resume -x", ["-m", "pytest", "-q", "tests"])])
def test_args_reach_every_command(stub, target, args, command):
    """make help: ARGS passes extra flags to the underlying command (inspect and test dropped them)."""
    assert stub(target, f"ARGS={args}") == [*command, *(["--verify", "--decode", "2"] if target == "inspect" else []),
                                            *args.split()]


def test_serve_takes_the_checkpoint_host_and_port(stub):
    """docs/inference.md: `make serve CKPT=... PORT=...` runs the OpenAI-compatible server."""
    assert stub("serve", "CKPT=runs/x/sft", "PORT=9000") == ["-m", "gpt", "serve", "--ckpt", "runs/x/sft", "--host",
                                                             "127.0.0.1", "--port", "9000"]
    assert stub("serve", "HOST=0.0.0.0", "ARGS=--max-tokens-limit 64")[-6:] == [
        "--host", "0.0.0.0", "--port", "8000", "--max-tokens-limit", "64"]
    assert stub("serve")[4] == "runs/sample/sft"


def test_clean_leaves_exports_alone(tmp_path):
    kept = [tmp_path / "runs" / "sample" / "sft-hf", tmp_path / "runs" / "fineweb10B" / "pretrain",
            tmp_path / "data" / "fineweb10B-pretrain"]
    gone = [tmp_path / "runs" / "sample" / "pretrain", tmp_path / "runs" / "sample" / "sft",
            tmp_path / "runs" / "sample" / "dpo", tmp_path / "runs" / "sample" / "rm",
            tmp_path / "runs" / "sample" / "rl",
            tmp_path / "data" / "sample-pretrain", tmp_path / "data" / "sample-source",
            tmp_path / "data" / "sample-sft", tmp_path / "data" / "sample-prefs"]
    for folder in kept + gone:
        folder.mkdir(parents=True)
        (folder / "file").touch()
    proc = subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "clean"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert all(f.exists() for f in kept) and not any(f.exists() for f in gone)


def test_setup_after_a_venv_interrupted_before_pip_continues(tmp_path):
    """README: Ctrl-C, then `make demo` again continues. Ctrl-C in `python -m venv` (its ensurepip takes seconds)
    leaves .venv/bin/python without pip; the setup put pip in, not failing at every rerun with "No module named pip"."""
    calls = tmp_path / "calls"
    folder = tmp_path / "venv"
    (folder / "bin").mkdir(parents=True)
    python = folder / "bin" / "python"  # a python without pip until `-m ensurepip` gives it one
    python.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nif [ "$2" = ensurepip ]; then touch {folder}/pip; exit 0; fi\n'
                      f'if [ "$2" = pip ] && [ ! -e {folder}/pip ]; then echo "No module named pip" >&2; exit 1; fi\n')
    python.chmod(0o755)
    proc = subprocess.run(["make", "-s", "--no-print-directory", "setup", f"VENV={folder}", "PYTHON=false"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = calls.read_text().splitlines()
    assert lines[lines.index("-m ensurepip --default-pip") + 1].startswith("-m pip install -q -r requirements.lock")
    assert (folder / ".installed").exists()


def test_help_lists_every_variable():
    """README: `make help` gives the full list of variables; each one the Makefile defaults with `?=` is named
    (but PYTHON and VENV, which only the setup reads)."""
    variables = set(re.findall(r"^([A-Z_]+) \?=", (ROOT / "Makefile").read_text(), re.M)) - {"PYTHON", "VENV"}
    proc = subprocess.run(["make", "-s", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert variables and not {v for v in variables if not re.search(rf"\b{v}\b", proc.stdout)}


# Paths as users name them: a space, quotes, unicode, a leading dash (which the program must not read as a flag)
PATHS = ["my data/d", "it's \"here\"", "données/日本 🙂", "-starts-like-a-flag"]


@pytest.mark.parametrize("value", PATHS)
def test_paths_reach_every_command_as_one_argument(stub, value):
    """DATA_DIR, RUN_DIR, SOURCE, INIT, CKPT, OUT and REWARD=rm:PATH with spaces, quotes or unicode were split
    into several arguments (`--data-dir my data`: a usage error, or another folder)."""
    shown = f"./{value}" if value.startswith("-") else value
    paths = (f"DATA_DIR={value}", f"RUN_DIR={value}/r", f"INIT={value}/i")
    for target in ["pretrain-shards", "sft-shards", "pref-shards"]:
        argv = stub(target, f"DATA_DIR={value}", f"SOURCE={value}/s.jsonl")
        assert argv[argv.index("--data-dir") + 1] == shown and argv[argv.index("--source") + 1] == f"{shown}/s.jsonl"
    assert stub("inspect", f"DATA_DIR={value}")[3] == shown
    for target, start in [("pretrain", None), ("sft", "--pretrain-run"), ("dpo", "--sft-run"), ("rm", "--sft-run"),
                          ("rl", "--sft-run")]:
        argv = stub(target, *paths, f"REWARD=rm:{value}/rm")
        assert argv[argv.index("--data-dir") + 1] == shown and argv[argv.index("--init") + 1] == f"{shown}/i"
        assert argv[argv.index("--run-dir") + 1] == f"{shown}/r/{target}"
        if start:
            assert argv[argv.index(start) + 1] == f"{shown}/r/{'pretrain' if target == 'sft' else 'sft'}"
        if target == "rl":
            assert argv[argv.index("--reward") + 1] == f"rm:{value}/rm"
    for target in ["generate", "chat", "serve"]:
        argv = stub(target, f"CKPT={value}/c")
        assert argv[argv.index("--ckpt") + 1] == f"{shown}/c"
    assert stub("export-hf", f"CKPT={value}/c")[3:] == [f"{shown}/c", f"{shown}/c-hf"]
    assert stub("export-hf", f"CKPT={value}/c", f"OUT={value}/o")[3:] == [f"{shown}/c", f"{shown}/o"]


def test_a_path_from_home_is_expanded_as_typed(stub):
    """`DATA_DIR=~/data` unexpanded by the user's shell (zsh) still means the home folder, as before the quoting."""
    assert stub("inspect", "DATA_DIR=~/my data")[3] == f"{os.environ['HOME']}/my data"


def test_clean_with_a_space_in_data_dir_removes_only_the_samples_folders(tmp_path):
    """`make clean DATA_DIR="my data"` ran `rm -rf my data/sample-source ...`: it removed the whole folder `my`."""
    kept = tmp_path / "my" / "precious"
    gone = tmp_path / "my data" / "sample-pretrain"
    for folder in (kept, gone):
        folder.mkdir(parents=True)
        (folder / "file").touch()
    proc = subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "clean", "DATA_DIR=my data"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (kept / "file").exists() and not gone.exists()


def test_hellaswag_targets(stub):
    """docs/evaluation.md: `make hellaswag-shards`, then `make hellaswag` scores the pretraining run, or CKPT=."""
    assert stub("hellaswag-shards", "DATA_DIR=d") == ["-m", "pipelines", "hellaswag", "--data-dir", "d"]
    assert stub("hellaswag") == ["-m", "train", "hellaswag", "--ckpt", "runs/sample/pretrain", "--data-dir", "data"]
    argv = stub("hellaswag", "CKPT=gpt2 folder", "LIMIT=100", "NGPU=2")
    assert argv[:3] == ["-m", "torch.distributed.run", "--shutdown-timeout=300"]
    assert argv[argv.index("--ckpt") + 1] == "gpt2 folder" and argv[argv.index("--limit") + 1] == "100"
