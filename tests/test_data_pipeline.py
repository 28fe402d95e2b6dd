"""The preprocessing pipeline end to end on DirectRunner: every source, every rejection reason,
exact counts, records read back, byte-identical reruns (also with two worker processes).

    python -m pytest tests/test_data_pipeline.py
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from array_record.python import array_record_data_source
from PIL import Image
from test_data_pipeline_process import png_header_only

from data_pipeline import build, process, write
from data_pipeline.synthetic import scenes
from reasonclip_jax.data import records
from reasonclip_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def image_bytes(width: int, height: int, seed: int, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    """A smooth random image (so that JPEGs of different seeds differ)."""
    rng = np.random.default_rng(seed)
    u, v = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    c = rng.uniform(0, 255, (3, 3))
    pixels = np.stack(
        [c[i, 0] + (c[i, 1] - c[i, 0]) * u * v + c[i, 2] * u * (1 - v) / 4 for i in range(3)], -1
    )
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert(mode)
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def files_of(directory: str) -> dict[str, bytes]:
    out = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = f.read()
    return out


def read_back(directory: str) -> dict[str, tuple[str, records.Record]]:
    """key -> (split, record) over every split present."""
    manifest = records.read_manifest(directory)
    out = {}
    for split, count in manifest["splits"].items():
        shards = records.ShardDirectory(directory, split)
        assert len(shards) == count
        for r in shards.read_all():
            assert r.key not in out
            out[r.key] = (split, r)
    return out


def rejected_lines(directory: str) -> list[tuple[str, str]]:
    with open(os.path.join(directory, write.REJECTED)) as f:
        return [(d["location"], d["reason"]) for d in map(json.loads, f)]


def check_image(
    record: records.Record, original_size: tuple[int, int], max_short_side: int = 256
) -> None:
    expected = process.target_size(*original_size, max_short_side)
    assert (record.width, record.height) == expected
    with Image.open(io.BytesIO(record.image)) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == expected


# ----------------------------------------------------------------------------------------------
# One JSONL input with every rejection reason among good rows.
# ----------------------------------------------------------------------------------------------

MIXED_ARGS = ["--source", "jsonl", "--num-shards", "3", "--validation-fraction", "0.4", "--dedup"]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixed")
    images = d / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(image_bytes(300, 200, 0))
    (images / "a_copy.jpg").write_bytes(image_bytes(300, 200, 0))
    (images / "b.png").write_bytes(image_bytes(80, 60, 1, "PNG", "RGBA"))
    (images / "adir.jpg").mkdir()
    (images / "empty.jpg").write_bytes(b"")
    (images / "text.jpg").write_bytes(b"this is not an image\n")
    whole = image_bytes(300, 300, 2)
    (images / "trunc.jpg").write_bytes(whole[: len(whole) // 2])
    (images / "small.jpg").write_bytes(image_bytes(20, 40, 3))
    (images / "bomb.png").write_bytes(png_header_only(8000, 8000))
    sizes = {f"g{i}.jpg": (256 + 40 * i, 400 - 30 * i) for i in range(4)}
    for i, (name, size) in enumerate(sizes.items()):
        (images / name).write_bytes(image_bytes(*size, 10 + i))
    b64 = base64.b64encode(image_bytes(500, 400, 4)).decode()
    s2 = {"trp": "it will fall over", "trp_cls": "P", "trp_cls_ls": ["S", "P", "T"]}
    rows = [
        {"image_path": "images/a.jpg", "desc": ["a red  box"], "reason": ["it is heavy"]},  # 0
        {"image_path": "images/b.png", "tb": ["a sign"], **s2},  # 1
        {"image_b64": b64, "tb": ["x", "y"], "trl": ["z"]},  # 2
        {"image_path": "images/missing.jpg", "desc": ["m"]},  # 3
        {"image_path": "images/adir.jpg", "desc": ["d"]},  # 4
        {"image_path": "images/empty.jpg", "desc": ["e"]},  # 5
        {"image_path": "images/text.jpg", "desc": ["t"]},  # 6
        {"image_path": "images/trunc.jpg", "desc": ["t"]},  # 7
        {"image_path": "images/small.jpg", "desc": ["s"]},  # 8
        {"image_path": "images/bomb.png", "desc": ["b"]},  # 9
        {"image_path": "images/a.jpg", "desc": ["ok", "  "]},  # 10
        {"image_path": "images/a.jpg", "desc": ["bad \udc80 text"]},  # 11
        {"image_path": "images/a.jpg"},  # 12
        {"image_path": "images/a.jpg", **s2, "trp_cls": "Q"},  # 13
        {"image_path": "images/a.jpg", **s2, "trp_cls_ls": ["S", "A"]},  # 14
        {"image_path": "images/a_copy.jpg", "desc": ["copy"]},  # 15
    ]
    lines = [json.dumps(r) for r in rows]
    lines += ["{not json", "", json.dumps({"image_b64": "***", "desc": ["x"]})]  # 16, 17 blank, 18
    lines += [
        json.dumps({"image_path": f"images/{n}", "desc": [f"good {n}"]}) for n in sizes
    ]  # 19-22
    (d / "rows.jsonl").write_text("\n".join(lines) + "\n")

    expected = {  # key -> (original size, desc, reason, cat_caption, cat_label, image_labels)
        "rows.jsonl:0": ((300, 200), ("a red box",), ("it is heavy",), None, None, ()),
        "rows.jsonl:1": ((80, 60), ("a sign",), (), "it will fall over", 4, (0, 4, 3)),
        "rows.jsonl:2": ((500, 400), ("x", "y"), ("z",), None, None, ()),
    }
    for i, (name, size) in enumerate(sizes.items()):
        expected[f"rows.jsonl:{19 + i}"] = (size, (f"good {name}",), (), None, None, ())
    rejected = [
        ("rows.jsonl:3", process.MISSING_FILE),
        ("rows.jsonl:4", process.UNREADABLE_FILE),
        ("rows.jsonl:5", process.ZERO_BYTES),
        ("rows.jsonl:6", process.UNDECODABLE),
        ("rows.jsonl:7", process.TRUNCATED),
        ("rows.jsonl:8", process.TOO_SMALL),
        ("rows.jsonl:9", process.TOO_LARGE),
        ("rows.jsonl:10", process.EMPTY_CAPTION),
        ("rows.jsonl:11", process.NON_UTF8),
        ("rows.jsonl:12", process.WRONG_CAPTION_COUNT),
        ("rows.jsonl:13", process.UNKNOWN_LABEL),
        ("rows.jsonl:14", process.WRONG_LABEL_COUNT),
        ("rows.jsonl:15", process.DUPLICATE),
        ("rows.jsonl:16", process.MALFORMED),
        ("rows.jsonl:18", process.MALFORMED),
    ]
    out = str(d / "out")
    argv = [*MIXED_ARGS, "--input", str(d / "*.jsonl"), "--output", out]
    manifest = build.run(argv)[out]
    return {
        "dir": d,
        "out": out,
        "argv": argv,
        "manifest": manifest,
        "expected": expected,
        "rejected": rejected,
    }


def test_mixed_counts_and_rejections(mixed):
    m, expected, rejected = mixed["manifest"], mixed["expected"], mixed["rejected"]
    assert m["format_version"] == records.FORMAT_VERSION and m["source"] == "jsonl"
    assert m["input_rows"] == 22 == len(expected) + len(rejected)
    assert (m["written"], m["rejected"]) == (len(expected), len(rejected))
    reasons = {}
    for _, reason in rejected:
        reasons[reason] = reasons.get(reason, 0) + 1
    assert m["rejections"] == reasons
    assert rejected_lines(mixed["out"]) == rejected
    assert sum(m["splits"].values()) == len(expected)
    assert m["categories"]["cat_label"] == {"S": 0, "A": 0, "H": 0, "T": 0, "P": 1}
    assert m["categories"]["image_labels"] == {"S": 1, "A": 0, "H": 0, "T": 1, "P": 1}
    desc_words = sorted(len(t.split()) for e in expected.values() for t in e[1])
    assert m["captions"]["desc"]["words"]["count"] == len(desc_words)
    assert (m["captions"]["desc"]["words"]["min"], m["captions"]["desc"]["words"]["max"]) == (
        desc_words[0],
        desc_words[-1],
    )
    widths = sorted(process.target_size(*e[0], 256)[0] for e in expected.values())
    assert m["image"]["width"]["count"] == len(widths)
    assert (m["image"]["width"]["min"], m["image"]["width"]["max"]) == (widths[0], widths[-1])
    assert m["options"]["dedup"] is True and m["num_shards"] == 3


def test_mixed_records_read_back(mixed):
    got = read_back(mixed["out"])
    assert sorted(got) == sorted(mixed["expected"])
    assert {split for split, _ in got.values()} == {"train", "validation"}
    for key, (size, desc, reason, cat_caption, cat_label, image_labels) in mixed[
        "expected"
    ].items():
        split, r = got[key]
        assert split == write.place(r.id, 3, 0.4, False)[0]
        assert r.id == process.record_id("jsonl", key) and r.source == "jsonl"
        assert (r.desc, r.reason, r.cat_caption, r.cat_label, r.image_labels) == (
            desc,
            reason,
            cat_caption,
            cat_label,
            image_labels,
        )
        check_image(r, size)
    names = sorted(os.listdir(mixed["out"]))
    assert names == sorted(
        [write.MANIFEST, write.REJECTED]
        + [records.shard_name(s, i, 3) for s in ("train", "validation") for i in range(3)]
    )


def test_rerun_is_byte_identical_and_removes_stale_shards(mixed):
    before = files_of(mixed["out"])
    stale = os.path.join(mixed["out"], records.shard_name("train", 0, 9))
    open(stale, "wb").close()
    build.run(mixed["argv"])
    assert files_of(mixed["out"]) == before


def test_two_worker_processes_write_the_same_bytes(mixed, tmp_path):
    out = str(tmp_path / "mp")
    argv = [a if a != mixed["out"] else out for a in mixed["argv"]]
    argv += ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "data_pipeline.build", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert files_of(out) == files_of(mixed["out"])


@pytest.mark.gcs
def test_a_bucket_build_equals_the_disk_build(mixed, gcs):
    """Input, images and output in a bucket, through Beam's GCS IO (the emulator)."""
    from gcs_emulator import upload_tree

    upload_tree(gcs, str(mixed["dir"]), "raw", skip=("out",))
    out = gcs.uri("shards", "mixed")
    argv = [*MIXED_ARGS, "--input", gcs.uri("raw", "*.jsonl"), "--output", out]
    manifest = build.run(argv)[out]
    local = files_of(mixed["out"])
    remote = {name[len("shards/mixed/"):]: gcs.read(name) for name in gcs.objects("shards/mixed/")}
    assert sorted(remote) == sorted(local)  # nothing else: no temporary objects left
    for name in local:
        if name not in (write.MANIFEST, write.REJECTED):
            assert remote[name] == local[name], name  # byte-identical shards
    # The same manifest but for where its input was; the same rejections but one: a bucket
    # has no directories, so `images/adir.jpg` is a missing file there.
    local_manifest = json.loads(local[write.MANIFEST])
    assert manifest["options"].pop("input") == gcs.uri("raw", "*.jsonl")
    local_manifest["options"].pop("input")
    moved = {process.UNREADABLE_FILE: -1, process.MISSING_FILE: +1}
    for reason, change in moved.items():
        local_manifest["rejections"][reason] = local_manifest["rejections"].get(reason, 0) + change
    local_manifest["rejections"] = {k: v for k, v in local_manifest["rejections"].items() if v}
    assert manifest == local_manifest
    rejected = [json.loads(line) for line in remote[write.REJECTED].splitlines()]
    expected = [json.loads(line) for line in local[write.REJECTED].splitlines()]
    assert [(r["location"], r["reason"]) for r in rejected] == [
        (r["location"], process.MISSING_FILE if r["location"] == "rows.jsonl:4" else r["reason"])
        for r in expected]


# ----------------------------------------------------------------------------------------------
# The other sources.
# ----------------------------------------------------------------------------------------------


def test_reasonclip_stage1_parquet(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"{i}.jpg").write_bytes(image_bytes(320, 240, 20 + i))
    data = tmp_path / "s1"
    data.mkdir()
    three = lambda p: [f"{p} one", f"{p} two", f"{p} three"]
    pq.write_table(
        pa.table(
            {
                "image_path": ["0.jpg", "1.jpg", "1.jpg", "nope.jpg"],
                "tb": [three("tb0"), three("tb1"), three("tb2")[:2], three("tb3")],
                "trl": [three("trl0"), three("trl1"), three("trl2"), three("trl3")],
            }
        ),
        data / "part-0.parquet",
    )
    binary = pa.list_(pa.binary())
    pq.write_table(  # captions stored as bytes: one valid, one not UTF-8
        pa.table(
            {
                "image_path": ["2.jpg", "2.jpg"],
                "tb": pa.array([[s.encode() for s in three("tb4")], [b"\xff", b"b", b"c"]], binary),
                "trl": pa.array([[s.encode() for s in three("trl4")]] * 2, binary),
            }
        ),
        data / "part-1.parquet",
    )
    (data / "part-2.parquet").write_bytes(b"PAR1 this is not parquet")
    out = str(tmp_path / "out")
    m = build.run(
        [
            "--source",
            "reasonclip-s1",
            "--input",
            str(data),
            "--image-root",
            str(images),
            "--output",
            out,
            "--num-shards",
            "2",
        ]
    )[out]
    assert (m["input_rows"], m["written"], m["rejected"]) == (7, 3, 4)
    assert rejected_lines(out) == [
        ("part-0.parquet:2", process.WRONG_CAPTION_COUNT),
        ("part-0.parquet:3", process.MISSING_FILE),
        ("part-1.parquet:1", process.NON_UTF8),
        ("part-2.parquet", process.UNREADABLE_INPUT),
    ]
    got = read_back(out)
    for key, n in (("part-0.parquet:0", 0), ("part-0.parquet:1", 1), ("part-1.parquet:0", 4)):
        r = got[key][1]
        assert r.desc == tuple(three(f"tb{n}")) and r.reason == tuple(three(f"trl{n}"))
        check_image(r, (320, 240))


def test_reasonclip_stage2_parquet_keeps_categories_of_one_image(tmp_path):
    (tmp_path / "img.jpg").write_bytes(image_bytes(64, 96, 30))
    labels = ["S", "A", "H"]
    pq.write_table(
        pa.table(
            {
                "image_path": ["img.jpg"] * 5,
                "trp": ["spatial", "state", "action", "bad label", "two labels"],
                "trp_cls": ["S", "A", "H", "X", "S"],
                "trp_cls_ls": [labels, labels, labels, labels, labels[:2]],
            }
        ),
        tmp_path / "s2.parquet",
    )
    out = str(tmp_path / "out")
    m = build.run(
        [
            "--source",
            "reasonclip-s2",
            "--input",
            str(tmp_path / "s2.parquet"),
            "--output",
            out,
            "--dedup",
        ]
    )[out]
    assert (m["written"], m["rejections"]) == (
        3,
        {process.UNKNOWN_LABEL: 1, process.WRONG_LABEL_COUNT: 1},
    )
    assert m["categories"]["cat_label"] == {"S": 1, "A": 1, "H": 1, "T": 0, "P": 0}
    got = read_back(out)
    for i, caption in enumerate(["spatial", "state", "action"]):
        r = got[f"s2.parquet:{i}"][1]
        assert (r.cat_caption, r.cat_label, r.image_labels) == (caption, i, (0, 1, 2))
        check_image(r, (64, 96))


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_webdataset_tars(tmp_path):
    with tarfile.open(tmp_path / "shard-000.tar", "w") as tar:
        _add(tar, "s0.jpg", image_bytes(300, 260, 40))
        _add(tar, "s0.txt", b"a cat ")
        _add(tar, "s1.png", image_bytes(100, 90, 41, "PNG"))
        _add(tar, "s1.json", json.dumps({"caption": "a dog", "alt": ["on grass"], "w": 1}).encode())
        _add(tar, "s1.cls", b"3")
        _add(tar, "s2.webp", image_bytes(70, 80, 42, "WEBP"))
        _add(tar, "s2.txt", b"a bird")
        _add(tar, "s2.json", json.dumps({"caption": "a  bird"}).encode())
        _add(tar, "s3.txt", b"no image")
        _add(tar, "s4.jpg", image_bytes(64, 64, 43))
        _add(tar, "s4.txt", b"\xff\xfe")
        _add(tar, "s5.jpg", image_bytes(64, 64, 44))
        _add(tar, "s6.jpg", image_bytes(64, 64, 45))
        _add(tar, "s6.json", b"{bad")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add(tar, "t0.jpg", image_bytes(64, 64, 46))
        _add(tar, "t0.txt", b"before the cut")
        _add(tar, "t1.jpg", os.urandom(40000))
    (tmp_path / "shard-001.tar").write_bytes(buf.getvalue()[:20000])  # cut inside t1.jpg
    out = str(tmp_path / "out")
    m = build.run(
        [
            "--source",
            "webdataset",
            "--input",
            str(tmp_path / "shard-*.tar"),
            "--output",
            out,
            "--json-caption-fields",
            "caption,alt",
        ]
    )[out]
    assert (m["input_rows"], m["written"], m["rejected"]) == (9, 4, 5)
    assert rejected_lines(out) == [
        ("shard-000.tar:s3", process.MISSING_FILE),
        ("shard-000.tar:s4", process.NON_UTF8),
        ("shard-000.tar:s5", process.WRONG_CAPTION_COUNT),
        ("shard-000.tar:s6", process.MALFORMED),
        ("shard-001.tar", process.UNREADABLE_INPUT),
    ]
    got = {k: r for k, (_, r) in read_back(out).items()}
    assert got["shard-000.tar:s0"].desc == ("a cat",)
    assert got["shard-000.tar:s1"].desc == ("a dog", "on grass")
    assert got["shard-000.tar:s2"].desc == ("a bird",)
    assert got["shard-001.tar:t0"].desc == ("before the cut",)
    check_image(got["shard-000.tar:s0"], (300, 260))
    check_image(got["shard-000.tar:s2"], (70, 80))


def _sets(prefix: str, n: int = 5, negatives: int = 4) -> list[dict]:
    tags = "SAHTP"
    return [
        {
            "tag": tags[i],
            "gt": f"{prefix} gt {i}",
            "neg": [f"{prefix} neg {i}.{j}" for j in range(negatives)],
        }
        for i in range(n)
    ]


def test_rclip_bench_parquet_and_jsonl(tmp_path):
    (tmp_path / "imgs").mkdir()
    p1, j0 = image_bytes(400, 300, 50), image_bytes(90, 120, 51, "PNG")
    (tmp_path / "imgs" / "p1.jpg").write_bytes(p1)
    (tmp_path / "imgs" / "j0.png").write_bytes(j0)
    p0 = image_bytes(256, 256, 52)
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(
        pa.table(
            {
                "id": [0, 1, 2, 3],
                "image_name": ["a", "b", "c", "d"],
                "text": ["t"] * 4,
                "version": ["V3"] * 4,
                "sets": [_sets("p0"), _sets("p1"), _sets("p2"), _sets("p3", negatives=3)],
                "image": pa.array(
                    [
                        {"bytes": p0, "path": None},
                        {"bytes": None, "path": "imgs/p1.jpg"},
                        {"bytes": None, "path": None},
                        {"bytes": image_bytes(64, 64, 53), "path": None},
                    ],
                    image,
                ),
            }
        ),
        tmp_path / "v3.parquet",
    )
    rows = [
        {"id": "j-0", "image_path": "imgs/j0.png", "sets": _sets("j0")},  # no version field
        {"image_path": "imgs/j0.png", "sets": []},
    ]
    (tmp_path / "v3.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = str(tmp_path / "out")
    m = build.run(["--source", "rclip-bench", "--input", str(tmp_path / "v3.*"), "--output", out])[
        out
    ]
    assert m["splits"] == {"test": 3} and (m["rejected"], m["dropped_sets"]) == (3, 0)
    assert rejected_lines(out) == [
        ("v3.jsonl:1", process.WRONG_CAPTION_COUNT),
        ("v3.parquet:2", process.MISSING_FILE),
        ("v3.parquet:3", process.BAD_SET),  # every set has 3 negatives: the row goes whole
    ]
    assert m["set_tags"] == {t: 3 for t in "AHPST"}
    assert m["options"]["keep_image_bytes"] is True and m["options"]["min_size"] == 1
    got = {k: r for k, (_, r) in read_back(out).items()}
    assert sorted(got) == ["v3.jsonl:0", "v3.parquet:0", "v3.parquet:1"]
    assert list(got["v3.jsonl:0"].sets) == _sets("j0") and list(got["v3.parquet:1"].sets) == _sets(
        "p1"
    )
    # Evaluation data: the image files' bytes as they are, at their own size.
    for key, data, size in [("v3.parquet:0", p0, (256, 256)), ("v3.parquet:1", p1, (400, 300)),
                            ("v3.jsonl:0", j0, (90, 120))]:
        assert got[key].image == data and (got[key].width, got[key].height) == size
    meta = {k: (r.source_id, r.image_name, r.text, r.version) for k, r in got.items()}
    assert meta == {
        "v3.parquet:0": ("0", "a", "t", "V3"),
        "v3.parquet:1": ("1", "b", "t", "V3"),
        "v3.jsonl:0": ("j-0", "j0.png", "", "v3"),  # the version named by the file, as the
    }                                                 # release picks its JSONL files


def test_image_paths_are_rerooted(tmp_path):
    from data_pipeline import sources

    resolve = sources.resolve_image_path
    assert resolve("a/b.jpg", "/in", None) == "/in/a/b.jpg"
    assert resolve("a/b.jpg", "/in", "/root") == "/root/a/b.jpg"
    assert resolve("/old/a/b.jpg", "/in", None) == "/old/a/b.jpg"
    assert resolve("/old/a/b.jpg", "/in", "/root") == "/root/b.jpg"  # the basename
    assert resolve("/old/a/b.jpg", "/in", "/root", "/old") == "/root/a/b.jpg"
    assert resolve("/old/a/b.jpg", "/in", None, "/old/") == "/in/a/b.jpg"
    assert resolve("data/imgs/b.jpg", "/in", "/root", "data/imgs") == "/root/b.jpg"
    for path, strip in [("/older/b.jpg", "/old"), ("/x/b.jpg", "/old"), ("old/b.jpg", "/old")]:
        with pytest.raises(ValueError, match="not under --image-root-strip"):
            resolve(path, "/in", "/root", strip)

    # Through the build: a JSONL written elsewhere, its absolute paths re-rooted.
    (tmp_path / "local" / "sub").mkdir(parents=True)
    (tmp_path / "local" / "sub" / "x.png").write_bytes(image_bytes(40, 40, 60, "PNG"))
    rows = [{"image_path": p, "sets": _sets("r", 1)}
            for p in ("/home/someone/rclip/sub/x.png", "/elsewhere/sub/x.png")]
    (tmp_path / "v2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = str(tmp_path / "out")
    m = build.run(["--source", "rclip-bench", "--input", str(tmp_path / "v2.jsonl"),
                   "--image-root", str(tmp_path / "local"), "--image-root-strip",
                   "/home/someone/rclip", "--output", out])[out]
    assert m["splits"] == {"test": 1} and m["options"]["image_root_strip"] == "/home/someone/rclip"
    assert rejected_lines(out) == [("v2.jsonl:1", process.MISSING_FILE)]
    (r,) = records.ShardDirectory(out, "test").read_all()
    assert (r.key, r.image_name) == ("v2.jsonl:0", "x.png")


def test_training_data_may_keep_its_image_bytes(tmp_path):
    data = image_bytes(300, 200, 61)
    (tmp_path / "a.jpg").write_bytes(data)
    (tmp_path / "rows.jsonl").write_text(json.dumps({"image_path": "a.jpg", "desc": ["a"]}))
    out = str(tmp_path / "out")
    m = build.run(["--source", "jsonl", "--input", str(tmp_path / "rows.jsonl"), "--output", out,
                   "--keep-image-bytes", "--validation-fraction", "0"])[out]
    assert m["options"]["keep_image_bytes"] is True and m["options"]["max_short_side"] is None
    (r,) = records.ShardDirectory(out, "train").read_all()
    assert r.image == data and (r.width, r.height) == (300, 200)


def test_scenes_write_three_directories(tmp_path):
    out = str(tmp_path / "out")
    manifests = build.run(
        [
            "--source",
            "scenes",
            "--num-scenes",
            "5",
            "--seed",
            "3",
            "--output",
            out,
            "--validation-fraction",
            "0.3",
            "--num-bench-scenes",
            "4",
        ]
    )
    assert sorted(manifests) == [os.path.join(out, s) for s in ("bench", "stage1", "stage2")]
    expected = [scenes.make_scene(i, 3, 64) for i in range(5)]
    held_out = [scenes.make_scene(i, 3, 64) for i in range(5, 9)]
    stage1 = read_back(os.path.join(out, "stage1"))
    stage2 = read_back(os.path.join(out, "stage2"))
    bench = read_back(os.path.join(out, "bench"))
    assert (len(stage1), len(stage2), len(bench)) == (5, 15, 4)
    assert not set(bench) & set(stage1)  # the benchmark's images are never trained on
    for s in held_out:
        assert list(bench[s.key][1].sets) == [dict(x) for x in s.bench_sets]
    assert all(m["rejected"] == 0 for m in manifests.values())
    assert {split for split, _ in bench.values()} == {"test"}
    for s in held_out:  # the benchmark keeps the PNG the scene was drawn as; training, JPEGs
        png = io.BytesIO()
        s.image.save(png, "PNG")
        assert bench[s.key][1].image == png.getvalue()
    assert all(r.image[:3] == b"\xff\xd8\xff" for _, r in stage1.values())
    for s in expected:
        r = stage1[s.key][1]
        assert (r.desc, r.reason, (r.width, r.height)) == (s.desc, s.reason, (64, 64))
        for label, caption in s.cat_captions:
            r = stage2[f"{s.key}/{records.CATEGORIES[label]}"][1]
            assert (r.cat_caption, r.cat_label, r.image_labels) == (caption, label, s.image_labels)


def test_scene_jitter_draws_the_jittered_scenes(tmp_path):
    out = str(tmp_path / "out")
    manifests = build.run(["--source", "scenes", "--num-scenes", "2", "--num-bench-scenes",
                           "2", "--seed", "3", "--scene-jitter", "--output", out])
    bench = read_back(os.path.join(out, "bench"))
    for index in (2, 3):
        png = io.BytesIO()
        scene = scenes.make_scene(index, 3, 64, jitter=True)
        scene.image.save(png, "PNG")
        assert bench[scene.key][1].image == png.getvalue()
        assert scene.image.tobytes() != scenes.make_scene(index, 3, 64).image.tobytes()
    assert manifests[os.path.join(out, "bench")]["options"]["scene_jitter"] is True


def test_scene_groups_are_written_next_to_each_other(tmp_path):
    out = str(tmp_path / "out")
    build.run(["--source", "scenes", "--num-scenes", "12", "--scene-group-size", "4",
               "--num-bench-scenes", "3", "--num-shards", "3", "--seed", "1",
               "--validation-fraction", "0.3", "--output", out])
    for subdir, per_group in (("stage1", 4), ("stage2", 4)):
        directory = os.path.join(out, subdir)
        manifest = records.read_manifest(directory)
        assert manifest["group_size"] == 4
        seen = []
        for split in manifest["splits"]:
            for path in records.shard_paths(directory, split):
                shard = array_record_data_source.ArrayRecordDataSource([path])
                groups = [records.decode_record(shard[i]).group for i in range(len(shard))]
                assert len(groups) % per_group == 0
                runs = [groups[i:i + per_group] for i in range(0, len(groups), per_group)]
                assert all(len(set(run)) == 1 and run[0] for run in runs), groups
                seen += [run[0] for run in runs]
        assert len(seen) == len(set(seen)) == (3 if subdir == "stage1" else 9)
    assert "group_size" not in records.read_manifest(os.path.join(out, "bench"))
    assert all(not r.group for _, r in read_back(os.path.join(out, "bench")).values())
    with pytest.raises(UserError, match="not a multiple of --scene-group-size 4"):
        build.run(["--source", "scenes", "--num-scenes", "10", "--scene-group-size", "4",
                   "--output", out])


# ----------------------------------------------------------------------------------------------
# Command-line errors.
# ----------------------------------------------------------------------------------------------


def test_unknown_source_is_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_pipeline.build",
            "--source",
            "nope",
            "--input",
            "x",
            "--output",
            str(tmp_path),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and "nope" in proc.stderr
    )


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--source", "jsonl", "--output", "{tmp}/o"], "needs --input"),
        (
            ["--source", "jsonl", "--input", "{tmp}/none/*.jsonl", "--output", "{tmp}/o"],
            "no jsonl input",
        ),
        (["--source", "scenes", "--output", "{tmp}/o"], "--num-scenes"),
        (
            ["--source", "jsonl", "--input", "x", "--output", "{tmp}/o", "--num-shards", "0"],
            "--num-shards",
        ),
        (["--source", "jsonl", "--input", "x"], "--output"),
        (
            [
                "--source",
                "jsonl",
                "--input",
                "{tmp}/a.jsonl",
                "--output",
                "{tmp}/o",
                "--direct_num_worker=2",
            ],
            "unrecognised arguments: --direct_num_worker=2",
        ),
    ],
)
def test_bad_command_lines_exit_2(tmp_path, capsys, argv, words):
    (tmp_path / "a.jsonl").write_text("{}\n")
    with pytest.raises(SystemExit) as e:
        build.main([a.format(tmp=tmp_path) for a in argv])
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and words in last
