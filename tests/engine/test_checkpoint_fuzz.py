"""Seeded mutation fuzz of ``load_checkpoint`` (issue 15): manifests and weight files are damaged the
ways a hostile or unlucky user would damage them. Every outcome must be a successful load or a
``ModelError`` (the CLI's exit status 3): never another exception, never a hang (per-case time
limit), never unbounded memory (the cases run in a child process under an address-space limit).

``HYPERCT_FUZZ_CASES`` (default 120) and ``HYPERCT_FUZZ_SEED`` (default 15) change the run; the
child can be run by hand: ``python -m tests.engine.test_checkpoint_fuzz BASE_DIR WORK_DIR SEED N``.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

PER_CASE_S = 30  # generous: the machine running CI may be loaded; typical cases take ~50 ms
MEMORY_HEADROOM = 2 << 30  # address space a case may add on top of the child's after imports

HOSTILE = [
    None,
    True,
    False,
    0,
    -1,
    1,
    3,
    7,
    99999,
    100_000,
    10**6,
    1e6,
    2**63,
    10**30,
    1e308,
    float("nan"),
    float("inf"),
    -float("inf"),
    0.5,
    -0.5,
    "",
    "x",
    "gelu",
    "included",
    "external",
    "../../x",
    "/etc/passwd",
    "/dev/zero",
    "model.safetensors",
    "\x00",
    [],
    {},
    [1, 2],
    ["q_proj"],
    {"a": 1},
    [[[[[[]]]]]],
]


class CaseTimeout(Exception):
    pass


# --- mutators (child side) ------------------------------------------------------------------------


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list) and len(value) <= 30:
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _set_path(raw, path, value):
    if not path:
        return value
    d = raw
    for p in path[:-1]:
        d = d[p]
    d[path[-1]] = value
    return raw


def _load_raw(folder):
    return json.loads((folder / "manifest.json").read_text())


def _save_raw(folder, raw):
    (folder / "manifest.json").write_text(json.dumps(raw))


def _resign(folder, rng, always=False):
    """Make the manifest's sha256 match the (mutated) weights, as a hostile author would."""
    if always or rng.random() < 0.8:
        from hyperct.checkpoint import sha256_file

        w = folder / "model.safetensors"
        if w.is_file():
            raw = _load_raw(folder)
            raw["weights_sha256"] = sha256_file(w)
            _save_raw(folder, raw)


def m_json_set(folder, rng):
    raw = _load_raw(folder)
    path = rng.choice([p for p in _paths(raw) if p])
    _save_raw(folder, _set_path(raw, path, rng.choice(HOSTILE)))
    return f"set {'.'.join(map(str, path))}"


def m_json_arch(folder, rng):
    raw = _load_raw(folder)
    arch = raw["architecture"]
    fields = [("architecture", k) for k, v in arch.items() if isinstance(v, (int, float))]
    fields += [
        ("architecture", "backbone", k) for k, v in arch["backbone"].items() if isinstance(v, (int, float))
    ]
    path = rng.choice(fields)
    d = raw
    for p in path[:-1]:
        d = d[p]
    old = d[path[-1]]
    d[path[-1]] = rng.choice(
        [old * 2, old + 1, old - 1, old * 1000, -old, 0, 99999, 100_000, 10**6, 1e6, float(old), not old]
    )
    _save_raw(folder, raw)
    return f"arch {'.'.join(path)}={d[path[-1]]!r}"


def m_json_delete(folder, rng):
    raw = _load_raw(folder)
    path = rng.choice([p for p in _paths(raw) if p and isinstance(p[-1], str)])
    d = raw
    for p in path[:-1]:
        d = d[p]
    del d[path[-1]]
    _save_raw(folder, raw)
    return f"delete {'.'.join(map(str, path))}"


def m_json_top(folder, rng):
    _save_raw(folder, rng.choice([[], "x", 3, None, [_load_raw(folder)], {"format": "hyperct-checkpoint"}]))
    return "replace the whole manifest"


def m_json_nest(folder, rng):
    raw = _load_raw(folder)
    path = rng.choice([p for p in _paths(raw) if p])
    depth = rng.choice([10, 40, 300, 5000])
    text = json.dumps(_set_path(raw, path, "@@DEEP@@"))
    (folder / "manifest.json").write_text(text.replace('"@@DEEP@@"', "[" * depth + "1" + "]" * depth))
    return f"nest {depth} deep at {'.'.join(map(str, path))}"


def m_bytes_manifest(folder, rng):
    p = folder / "manifest.json"
    data = bytearray(p.read_bytes())
    kind = rng.choice(["flip", "truncate", "invalid utf8", "utf16"])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        data = data[: rng.randrange(len(data))]
    elif kind == "invalid utf8":
        i = rng.randrange(len(data))
        data[i:i] = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"])
    else:
        data = bytearray(data.decode("utf-8").encode("utf-16"))
    p.write_bytes(bytes(data))
    return f"manifest bytes: {kind}"


def _header_split(w):
    data = w.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _header_join(w, header, body):
    h = json.dumps(header).encode()
    w.write_bytes(struct.pack("<Q", len(h)) + h + body)


def m_weights_bytes(folder, rng):
    w = folder / "model.safetensors"
    data = bytearray(w.read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    kind = rng.choice(["truncate", "flip header", "flip data", "header length", "append"])
    if kind == "truncate":
        data = data[: rng.randrange(len(data))]
    elif kind == "flip header":
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(8, 8 + n)] ^= 1 << rng.randrange(8)
    elif kind == "flip data":
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(8 + n, len(data))] ^= 1 << rng.randrange(8)
    elif kind == "header length":
        data[:8] = struct.pack("<Q", rng.choice([0, 1, n - 1, n + 1, 2**40, 2**64 - 1]))
    else:
        data += bytes(rng.randrange(1, 4096))
    w.write_bytes(bytes(data))
    _resign(folder, rng)
    return f"weights bytes: {kind}"


def m_weights_header(folder, rng):
    w = folder / "model.safetensors"
    header, body = _header_split(w)
    name = rng.choice([k for k in header if k != "__metadata__"])
    kind = rng.choice(["dtype", "shape", "offsets", "rename", "drop", "huge shape"])
    entry = header[name]
    if kind == "dtype":
        entry["dtype"] = rng.choice(["I8", "U8", "BOOL", "I64", "F16", "BF16", "F64", "F8_E4M3", "XX"])
    elif kind == "shape":
        entry["shape"] = rng.choice([[], [0], list(reversed(entry["shape"])), [*entry["shape"], 1], [-1]])
    elif kind == "offsets":
        a, b = entry["data_offsets"]
        entry["data_offsets"] = rng.choice([[b, a], [a, b + 4], [0, len(body)], [a, 2**62]])
    elif kind == "rename":
        header[name + ".x"] = header.pop(name)
    elif kind == "drop":
        del header[name]
    else:
        entry["shape"] = [100_000, 100_000, 100_000]
    _header_join(w, header, body)
    _resign(folder, rng)
    return f"weights header: {kind} of {name}"


def m_weights_values(folder, rng):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    w = folder / "model.safetensors"
    with safe_open(str(w), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    name = rng.choice(sorted(tensors))
    kind = rng.choice(
        ["int8", "bool", "float16", "bfloat16", "float64", "nan", "inf", "drop", "extra", "reshape"]
    )
    t = tensors[name]
    if kind in ("int8", "bool", "float16", "bfloat16", "float64"):
        tensors[name] = t.to(getattr(torch, kind))
    elif kind in ("nan", "inf"):
        t = t.clone()
        t.view(-1)[rng.randrange(t.numel())] = float(kind)
        tensors[name] = t
    elif kind == "drop":
        del tensors[name]
    elif kind == "extra":
        tensors["hypernet.extra"] = torch.zeros(3)
    else:
        tensors[name] = t.reshape(-1)
    save_file(tensors, str(w))
    _resign(folder, rng, always=True)
    return f"weights values: {kind} of {name}"


def m_weights_file(folder, rng):
    raw = _load_raw(folder)
    kind = rng.choice(
        ["dotdot", "absolute", "dev zero", "symlink out", "symlink dev", "fifo", "folder", "dot", "empty"]
    )
    w = folder / "model.safetensors"
    outside = folder.parent / f"outside-{rng.randrange(10**9)}.safetensors"
    if kind == "dotdot":
        shutil.copy(w, outside)
        raw["weights_file"] = f"../{outside.name}"
    elif kind == "absolute":
        shutil.copy(w, outside)
        raw["weights_file"] = str(outside)
    elif kind == "dev zero":
        raw["weights_file"] = "/dev/zero"
    elif kind == "symlink out":
        shutil.copy(w, outside)
        w.unlink()
        os.symlink(outside, w)
    elif kind == "symlink dev":
        w.unlink()
        os.symlink("/dev/zero", w)
    elif kind == "fifo":
        w.unlink()
        os.mkfifo(w)
    elif kind == "folder":
        raw["weights_file"] = "sub"
        (folder / "sub").mkdir()
    elif kind == "dot":
        raw["weights_file"] = "."
    else:
        raw["weights_file"] = ""
    _save_raw(folder, raw)
    return f"weights_file: {kind}"


MUTATORS = [
    m_json_set,
    m_json_set,
    m_json_arch,
    m_json_arch,
    m_json_delete,
    m_json_top,
    m_json_nest,
    m_bytes_manifest,
    m_weights_bytes,
    m_weights_header,
    m_weights_header,
    m_weights_values,
    m_weights_values,
    m_weights_file,
]


def run_cases(base: Path, work: Path, seed: int, n: int) -> list[dict]:
    import torch

    from hyperct.checkpoint import load_checkpoint
    from hyperct.errors import ModelError

    torch.set_num_threads(1)
    vm = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:
        vm_now = int(next(line for line in f if line.startswith("VmSize:")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm_now + MEMORY_HEADROOM, vm[1]))

    def on_alarm(signum, frame):
        raise CaseTimeout()

    signal.signal(signal.SIGALRM, on_alarm)
    results = []
    for i in range(n + 1):
        rng = random.Random(f"{seed}-{i}")
        folder = work / f"case{i:04d}" / "ckpt"
        shutil.copytree(base, folder)
        if i == 0:
            what = "unmutated"
        else:
            done = []
            chosen = rng.sample(MUTATORS, rng.choice([1, 1, 1, 2, 3]))
            # weights_file last: after it, model.safetensors may be a FIFO the harness must not open
            for m in sorted(chosen, key=lambda m: m is m_weights_file):
                try:
                    done.append(m(folder, rng))
                except Exception:  # noqa: BLE001 - a mutator that cannot apply to an already broken folder
                    done.append(f"{m.__name__} not applicable")  # e.g. the manifest is already not JSON
            what = "; ".join(done)
        t0 = time.perf_counter()
        signal.alarm(PER_CASE_S)
        try:
            load_checkpoint(folder)
            outcome, detail = "loaded", ""
        except ModelError as exc:
            outcome, detail = "typed", f"{type(exc).__name__}: {exc}"[:300]
        except CaseTimeout:
            outcome, detail = "timeout", f"more than {PER_CASE_S} s"
        except BaseException as exc:  # noqa: BLE001 - the point: anything else is a finding
            outcome, detail = "untyped", f"{type(exc).__name__}: {exc}"[:300]
        finally:
            signal.alarm(0)
        results.append(
            {"case": i, "mutation": what, "outcome": outcome, "detail": detail, "s": time.perf_counter() - t0}
        )
        shutil.rmtree(folder.parent, ignore_errors=True)
    return results


# --- the test (parent side) -----------------------------------------------------------------------


def test_mutated_checkpoints_load_or_fail_typed_fast_and_bounded(tmp_path):
    from tests.support.models import save_tiny_checkpoint

    n = int(os.environ.get("HYPERCT_FUZZ_CASES", "120"))
    seed = int(os.environ.get("HYPERCT_FUZZ_SEED", "15"))
    base = save_tiny_checkpoint(
        tmp_path / "base", seed=4, model_name="fuzz", model_version="1", backbone_source="tiny"
    )
    root = Path(__file__).resolve().parents[2]
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.engine.test_checkpoint_fuzz",
            str(base),
            str(tmp_path / "work"),
            str(seed),
            str(n),
        ],
        capture_output=True,
        text=True,
        timeout=120 + n * PER_CASE_S,
        cwd=root,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == n + 1
    assert results[0]["outcome"] == "loaded", results[0]  # the harness itself works
    bad = [r for r in results if r["outcome"] not in ("loaded", "typed")]
    assert not bad, "\n".join(
        f"case {r['case']} [{r['mutation']}]: {r['outcome']} {r['detail']}" for r in bad[:15]
    )
    typed = sum(r["outcome"] == "typed" for r in results)
    assert typed >= n // 2, f"only {typed} of {n} mutants were refused: the mutators are too weak"
    slowest = max(results, key=lambda r: r["s"])
    assert slowest["s"] < 10, slowest


if __name__ == "__main__":
    base_dir, work_dir, seed_arg, n_arg = sys.argv[1:5]
    out = run_cases(Path(base_dir), Path(work_dir), int(seed_arg), int(n_arg))
    print(json.dumps(out))
