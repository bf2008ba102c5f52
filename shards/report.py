"""`python -m shards inspect DIR [--verify] [--decode N]`: report on the shard folders under DIR: show, check, decode.

DIR is a stage folder or any folder above (DATA_DIR): every `manifest.json` below it is shown as a table
(file, split, tokens, documents or examples, bytes). --verify checks every shard against its manifest:
header, size, sha256 and token ids (below the manifest tokenizer's vocabulary) of the `.bin`, size and
sha256 of its sidecars (`.docs` for pretraining; `.mask` and `.idx` for SFT, preference and HellaSwag shards,
with masks only 0/1 and offsets increasing; HellaSwag's `.labels`, one 0..3 per 4 rows), and for preference
shards that the chosen and rejected files of a split pair up (as many examples, the same prompt tokens), and
that the manifest's totals agree with the shards it lists; it exits with status 1 naming each bad file.
--decode N prints N documents (pretraining), examples, prompt and answer apart (SFT), pairs, prompt, chosen
and rejected apart (preferences), or examples, context and endings apart (HellaSwag), of each folder.
Stage folders that a run began and never finished (a `.lock` or `parts/`, no manifest) are listed at the
end, with their size and the command that removes those no stage is writing now.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import numpy as np

from .format import ShardError, open_tokens, read_docs, read_header
from .io import lock_held
from .manifest import MANIFEST, PARTS, ManifestError, check_totals, load_manifest, not_a_folder, running_tasks
from .progress import bytes_bar
from .sft import open_sft_shard
from .tokenizer import EOT, VOCAB_SIZE
from .verify import check_file

DECODE_CHARS = 600
MASKED = ("sft", "prefs", "hellaswag")  # the kinds of manifest whose shards are SFT shards (tokens, mask, offsets)


def find_manifests(root: Path) -> list[Path]:
    """The folders under `root` (itself included) that hold a manifest, sorted."""
    if (root / MANIFEST).exists():
        return [root]
    return sorted(p.parent for p in root.rglob(MANIFEST))


def _count_key(manifest: dict) -> str:
    return "num_examples" if manifest.get("kind") in MASKED else "num_docs"


def print_table(folder: Path, manifest: dict) -> None:
    kind = manifest.get("kind", "?")
    print(f"\n{folder}  [{kind}] {manifest.get('name', '')}")
    shards = manifest.get("shards")
    if not shards:
        for f in manifest.get("source", {}).get("files") or []:
            print(f"  {f['file']:<44} {f['bytes']:>16,} bytes  sha256 {f['sha256'][:16]}")
        return
    count = _count_key(manifest)
    print(f"  {'file':<36} {'split':<6} {'tokens':>14} {count[4:]:>10} {'bytes':>15}")
    for s in shards:
        print(f"  {s['file']:<36} {s['split']:<6} {s['num_tokens']:>14,} {s.get(count, 0):>10,} {s['bytes']:>15,}")
    tokens = sum(s["num_tokens"] for s in shards)
    print(f"  {'total':<36} {'':<6} {tokens:>14,} {sum(s.get(count, 0) for s in shards):>10,} "
          f"{sum(s['bytes'] for s in shards):>15,}")
    totals = manifest.get("totals", {})
    if totals:
        print("  totals: " + ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in totals.items()))


def verify_shard(folder: Path, manifest: dict, entry: dict, progress=None) -> None:
    """Raise ShardError naming the bad file if the shard (or a sidecar) disagrees with the manifest or holds a
    token id outside the manifest tokenizer's vocabulary; `progress(n)` counts the bytes hashed."""
    path = folder / entry["file"]
    header = read_header(path)
    if header[2] != entry["num_tokens"]:
        raise ShardError(f"{path}: header says {header[2]} tokens, the manifest {entry['num_tokens']}")
    count = entry.get(_count_key(manifest), 0)
    if header[3] != count:
        raise ShardError(f"{path}: header says {header[3]} documents/examples, the manifest {count}")
    check_file(path, entry["bytes"], entry["sha256"], manifest.get("tokenizer", {}).get("n_vocab", VOCAB_SIZE),
               progress)
    if manifest.get("kind") in MASKED:
        for key in ("mask", "idx"):
            check_file(folder / entry[f"{key}_file"], entry[f"{key}_bytes"], entry[f"{key}_sha256"], progress=progress)
        shard = open_sft_shard(path)
        if len(shard) != count:
            raise ShardError(f"{folder / entry['idx_file']}: {len(shard)} examples, the manifest says {count}")
        if np.any(shard.mask > 1):
            raise ShardError(f"{folder / entry['mask_file']}: mask values other than 0 and 1")
        if "supervised_tokens" in entry and int(shard.mask.sum(dtype=np.int64)) != entry["supervised_tokens"]:
            raise ShardError(f"{folder / entry['mask_file']}: {int(shard.mask.sum())} supervised tokens, "
                             f"the manifest says {entry['supervised_tokens']}")
        if "labels_file" in entry:  # HellaSwag: one label (0..3) per 4 rows
            labels_path = folder / entry["labels_file"]
            check_file(labels_path, entry["labels_bytes"], entry["labels_sha256"], progress=progress)
            labels = np.fromfile(labels_path, dtype=np.uint8)
            if len(labels) * 4 != count or np.any(labels > 3):
                raise ShardError(f"{labels_path}: {len(labels)} labels for {count} rows (4 a label), or a label "
                                 "above 3")
    elif "docs_file" in entry:
        docs_path = folder / entry["docs_file"]
        check_file(docs_path, entry["docs_bytes"], entry["docs_sha256"], progress=progress)
        docs = read_docs(docs_path)
        if len(docs) != count:
            raise ShardError(f"{docs_path}: {len(docs)} document starts, the manifest says {count}")
        if len(docs) and (np.any(np.diff(docs) <= 0) or docs[-1] >= entry["num_tokens"]):
            raise ShardError(f"{docs_path}: document starts do not increase within the shard")
        if len(docs) and np.any(open_tokens(path)[docs] != EOT):
            raise ShardError(f"{docs_path}: a document start is not an EOT token in {path.name}")


def verify(folder: Path, manifest: dict) -> list[str]:
    """Every problem found in the folder's shards, one message per bad file, with a progress bar."""
    problems = []
    entries = manifest.get("shards") or []
    sources = (manifest.get("source", {}).get("files") or []) if manifest.get("kind") == "source" else []
    total = sum(e[key] for e in entries for key in ("bytes", "docs_bytes", "mask_bytes", "idx_bytes", "labels_bytes")
                if key in e)
    with bytes_bar(total + sum(f["bytes"] for f in sources), f"verify {folder.name}") as bar:
        for entry in entries:
            try:
                verify_shard(folder, manifest, entry, bar.update)
            except (ShardError, OSError) as e:
                problems.append(str(e))
        for f in sources:
            try:
                check_file(folder / f["file"], f["bytes"], f["sha256"], progress=bar.update)
            except (ShardError, OSError) as e:
                problems.append(str(e))
    if manifest.get("kind") == "prefs" and not problems:
        problems += [problem for entry in manifest.get("pairs") or [] if (problem := check_pair(folder, entry))]
    if problem := check_totals(folder, manifest):
        problems.append(problem)
    return problems


def prompt_length(mask: np.ndarray) -> int:
    """The tokens before the first supervised one (all of them when none is)."""
    return int(np.argmax(mask)) if mask.any() else len(mask)


def check_pair(folder: Path, entry: dict) -> str | None:
    """What is wrong with the pairing of a split's chosen and rejected shards (`entry` of the manifest's
    "pairs"): their example counts, or the first pair whose prompt tokens differ or whose mask is not the
    prompt's 0s then the answer's 1s. None when they pair up."""
    chosen, rejected = (open_sft_shard(folder / entry[side]) for side in ("chosen", "rejected"))
    if not len(chosen) == len(rejected) == entry["pairs"]:
        return (f"{folder / entry['rejected']}: {len(chosen)} chosen and {len(rejected)} rejected examples, the "
                f"manifest says {entry['pairs']} pairs")
    for i in range(len(chosen)):
        (c, cm), (r, rm) = chosen.example(i), rejected.example(i)
        n = prompt_length(cm)
        if n != prompt_length(rm) or not np.array_equal(c[:n], r[:n]):
            return f"{folder / entry['rejected']}: pair {i} has a prompt other than {entry['chosen']}'s"
        if not (cm[n:].all() and rm[n:].all()) or n == len(cm) or n == len(rm):
            return f"{folder / entry['chosen']}: pair {i} is not masked as prompt then answer"
    return None


def _clip(text: str) -> str:
    if len(text) <= DECODE_CHARS:
        return text
    return text[:DECODE_CHARS] + f" … [{len(text) - DECODE_CHARS:,} more chars]"


def _text(enc, path: Path, tokens: np.ndarray) -> str:
    """The clipped text of `tokens` read from `path`; an id outside the vocabulary is a ShardError naming the file
    (tiktoken's own KeyError would read as a manifest without that key)."""
    if len(tokens) and int(tokens.max()) >= enc.n_vocab:
        raise ShardError(f"{path}: token id {int(tokens.max())} is outside the vocabulary of {enc.n_vocab}")
    return _clip(enc.decode(tokens.tolist()))


def decode(folder: Path, manifest: dict, n: int) -> None:
    """Print the first n documents (or examples) of the folder's first shard, or its first n pairs (preferences:
    of the first split that has any)."""
    from .tokenizer import get_encoding
    enc = get_encoding()
    shards = manifest.get("shards") or []
    if not shards or n <= 0:
        return
    if manifest.get("kind") == "prefs":
        pairs = next((p for p in manifest.get("pairs") or [] if p["pairs"]), None)
        if pairs is not None:
            chosen, rejected = (open_sft_shard(folder / pairs[side]) for side in ("chosen", "rejected"))
            for i in range(min(n, len(chosen))):
                (tokens, mask), (other, other_mask) = chosen.example(i), rejected.example(i)
                start = prompt_length(mask)
                print(f"--- {pairs['split']} pair {i} ({start} prompt tokens, {len(tokens) - start} chosen, "
                      f"{len(other) - start} rejected)")
                print("PROMPT: " + _text(enc, folder / pairs["chosen"], tokens[:start]))
                print("CHOSEN: " + _text(enc, folder / pairs["chosen"], tokens[start:]))
                print("REJECTED: " + _text(enc, folder / pairs["rejected"], other[prompt_length(other_mask):]))
        return
    path = folder / shards[0]["file"]
    if manifest.get("kind") == "hellaswag":
        shard, labels = open_sft_shard(path), np.fromfile(folder / shards[0]["labels_file"], dtype=np.uint8)
        for i in range(min(n, len(labels))):
            rows = [shard.example(4 * i + j) for j in range(4)]
            print(f"--- {path.name} example {i} (rows {4 * i}..{4 * i + 3}, right ending {labels[i]})")
            print("CONTEXT: " + _text(enc, path, rows[0][0][:prompt_length(rows[0][1])]))
            for j, (tokens, mask) in enumerate(rows):
                print(f"ENDING {j}{' (right)' if j == labels[i] else ''}: "
                      + _text(enc, path, tokens[prompt_length(mask):]))
        return
    if manifest.get("kind") == "sft":
        shard = open_sft_shard(path)
        for i in range(min(n, len(shard))):
            tokens, mask = shard.example(i)
            start = prompt_length(mask)
            print(f"--- {path.name} example {i} ({len(tokens)} tokens, {len(tokens) - start} supervised)")
            print("PROMPT: " + _text(enc, path, tokens[:start]))
            print("ANSWER: " + _text(enc, path, tokens[start:]))
        return
    tokens = open_tokens(path)
    docs = read_docs(folder / shards[0]["docs_file"]).tolist() + [len(tokens)]
    for i in range(min(n, len(docs) - 1)):
        a, b = docs[i], docs[i + 1]
        print(f"--- {path.name} document {i} (tokens {a}..{b})")
        print(_text(enc, path, tokens[a + 1:b]))


def unfinished(root: Path) -> list[Path]:
    """The stage folders under `root` that a run began and never finished: a `.lock` or `parts/`, no manifest
    (hidden folders, such as a download's `.download/`, are a stage's own bookkeeping)."""
    found = {p.parent for p in root.rglob(".lock")} | {p.parent for p in root.rglob(PARTS) if p.is_dir()}
    return sorted(f for f in found if not (f / MANIFEST).exists()
                  and not any(part.startswith(".") for part in f.relative_to(root).parts))


def folder_bytes(folder: Path) -> int:
    """The bytes of the files under `folder`; a file or folder that a running stage renames or removes
    meanwhile is skipped."""
    total = 0
    for root, _, names in os.walk(folder):  # a folder that vanishes is skipped (os.walk ignores the error)
        for name in names:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue
    return total


def print_unfinished(folders: list[Path]) -> None:
    """List unfinished stage folders with their size, and how to remove those no stage is writing now."""
    if not folders:
        return
    print(f"\nunfinished stage folders (no {MANIFEST}: a stage that failed, was killed, or is running now):")
    idle = []
    for folder in folders:
        size = folder_bytes(folder)
        running = lock_held(folder) or bool(running_tasks(folder / PARTS))
        print(f"  {folder}  {size:,} bytes{'  (a stage is running in it now)' if running else ''}")
        idle += [] if running else [folder]
    if idle:
        print("rerunning the command that started one continues it; to remove them instead: "
              f"rm -rf {' '.join(shlex.quote(str(f)) for f in idle)}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "inspect":
        argv = argv[1:]
    p = argparse.ArgumentParser(prog="python -m shards inspect", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=Path, help="a stage folder or DATA_DIR")
    p.add_argument("--verify", action="store_true", help="check every file against its manifest")
    p.add_argument("--decode", type=int, default=0, metavar="N", help="print N decoded documents per folder")
    args = p.parse_args(argv)
    if args.decode < 0:
        p.error(f"--decode must be 0 or more, got {args.decode}")
    folders = find_manifests(args.dir) if args.dir.is_dir() else []
    leftovers = unfinished(args.dir) if args.dir.is_dir() else []
    if not folders:
        print_unfinished(leftovers)
        problem = not_a_folder(args.dir, f"a folder (pass the shards folder that holds {MANIFEST}, or a folder "
                                         "above it: DATA_DIR)") or f"no {MANIFEST} under {args.dir}"
        print(f"error: {problem}", file=sys.stderr)
        return 1
    bad = 0
    for folder in folders:
        try:
            manifest = load_manifest(folder)
        except ManifestError as e:
            print(f"BAD {e}", file=sys.stderr)
            bad += 1
            continue
        try:
            print_table(folder, manifest)
            problems = verify(folder, manifest) if args.verify else []
            if args.verify and not problems:
                print(f"  verified: every file matches {folder / MANIFEST}")
            if not problems:  # decoding a bad shard would only fail again
                decode(folder, manifest, args.decode)
        except KeyError as e:
            problems = [f"{folder / MANIFEST}: an entry has no {e} (written by another version?)"]
        except (ShardError, OSError) as e:  # their messages name the file
            problems = [str(e)]
        except (TypeError, ValueError) as e:
            problems = [f"{folder / MANIFEST}: {e}"]
        for msg in problems:
            print(f"BAD {msg}", file=sys.stderr)
        bad += len(problems)
    print_unfinished(leftovers)
    if bad:
        print(f"error: {bad} bad file(s)", file=sys.stderr)
        return 1
    return 0
