"""Per-row processing of the preprocessing pipeline, without Beam.

python -m pytest tests/test_data_pipeline_process.py
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from data_pipeline import process as P
from data_pipeline import stats, write
from reasonclip_jax.data.records import natural_key

OPTIONS = P.ImageOptions()
ANY = P.Schema()
STAGE1 = P.Schema(desc=(3, 3), reason=(3, 3))
STAGE2 = P.Schema(cat_caption=True, image_labels=True)


def jpeg(width: int, height: int, color=(200, 30, 60), **save) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "JPEG", **save)
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a size and carries junk instead of pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"junk") + chunk(b"IEND", b"")
    )


def run(fields=None, schema=ANY, image: bytes | None = None, path: str | None = None,
        fmt: P.ImageOptions = OPTIONS):
    row = P.RawRow(
        "f.jsonl:7",
        image_bytes=image,
        image_path=path,
        fields={"desc": ["a cat"]} if fields is None else fields,
    )
    return P.process_row(row, "test", schema, fmt)


def reason_of(result) -> str:
    assert isinstance(result, P.Rejection), result
    assert result.location == "f.jsonl:7"
    return result.reason


@pytest.mark.parametrize(
    "size, expected",
    [
        ((600, 400), (384, 256)),
        ((400, 600), (256, 384)),
        ((256, 1000), (256, 1000)),
        ((100, 50), (100, 50)),
        ((257, 257), (256, 256)),
        ((1001, 300), (854, 256)),
    ],
)
def test_target_size_caps_the_shorter_side_and_never_upscales(size, expected):
    assert P.target_size(*size, 256) == expected


def test_good_row_becomes_a_resized_jpeg_record():
    result = run(
        {"desc": ["  a\n red   square "], "reason": ["it was painted"]}, image=jpeg(600, 400)
    )
    assert isinstance(result, P.Processed)
    r = result.record
    assert (r.width, r.height) == (384, 256)
    assert r.desc == ("a red square",) and r.reason == ("it was painted",)
    assert r.id == P.record_id("test", "f.jsonl:7") and r.source == "test" and r.key == "f.jsonl:7"
    with Image.open(io.BytesIO(r.image)) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (384, 256)
        assert np.abs(np.asarray(im, np.int16).mean((0, 1)) - (200, 30, 60)).max() < 4


def test_transparency_goes_to_white_and_exif_orientation_is_applied():
    rgba = Image.new("RGBA", (64, 40), (0, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    r = run(image=buf.getvalue()).record
    with Image.open(io.BytesIO(r.image)) as im:
        assert np.asarray(im).min() > 245
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    r = run(image=jpeg(80, 40, exif=exif.tobytes())).record
    assert (r.width, r.height) == (40, 80)


def test_stage2_fields_and_labels():
    fields = {"cat_caption": "it will fall", "cat_label": "P", "image_labels": ["S", "P", 2]}
    r = run(fields, STAGE2, image=jpeg(64, 64)).record
    assert (r.cat_caption, r.cat_label, r.image_labels) == ("it will fall", 4, (0, 4, 2))


BENCH = P.Schema(sets=True)


def test_bench_sets_strip_ends_only_and_keep_tags_verbatim():
    # The release's validate_set_item: gt and negatives `.strip()`ed, inner spaces kept, the
    # tag as it is (even surrounding spaces).
    sets = [{"tag": " Att. ", "gt": " left  of\n", "neg": ["\ta", "b ", " c  d", "e"]}]
    result = run({"sets": sets}, BENCH, image=jpeg(64, 64))
    assert result.record.sets == ({"tag": " Att. ", "gt": "left  of", "neg": ["a", "b", "c  d",
                                                                              "e"]},)
    assert result.dropped_sets == () and result.record.set_index == ()


def test_malformed_sets_are_dropped_one_by_one():
    good = {"tag": "S", "gt": "g", "neg": ["a", "b", "c", "d"]}
    sets = [
        {**good, "tag": ""},  # bad tag
        good,
        {**good, "tag": 3},  # bad tag
        {**good, "gt": "  "},  # bad gt
        {**good, "neg": ["a", "b", "c"]},  # bad neg: 3
        {**good, "neg": ["a", "b", "c", 4]},  # bad neg: not a string
        {**good, "neg": ("a", "b", "c", "d")},  # bad neg: not a list (JSON gives lists)
        {**good, "neg": ["a", "b", " ", "d"]},  # bad neg: empty once stripped
        "not a set",
        {**good, "gt": "lone \udc80"},  # valid for the release, but no UTF-8 exists for it
        {**good, "tag": "A"},
    ]
    result = run({"sets": sets}, BENCH, image=jpeg(64, 64))
    assert result.record.sets == (good, {**good, "tag": "A"})
    assert result.record.set_index == (1, 10)
    why = {r.set_index: r.detail for r in result.dropped_sets}
    assert all(r.reason == P.BAD_SET and r.location == "f.jsonl:7" for r in result.dropped_sets)
    assert sorted(why) == [0, 2, 3, 4, 5, 6, 7, 8, 9]
    assert [why[i].split(":")[0] for i in (0, 2, 3, 4, 5, 6, 7)] == (
        ["bad tag"] * 2 + ["bad gt"] + ["bad neg"] * 4)
    assert why[8].startswith("not an object") and why[9].startswith(P.NON_UTF8)


def test_a_row_goes_whole_only_without_a_valid_set():
    bad = [{"tag": "", "gt": "g", "neg": list("abcd")}, {"tag": "S", "gt": "", "neg": list("abcd")}]
    rejection = run({"sets": bad}, BENCH, image=jpeg(64, 64))
    assert reason_of(rejection) == P.BAD_SET
    assert rejection.detail == "no valid set: sets[0] bad tag; sets[1] bad gt"
    assert reason_of(run({"sets": []}, BENCH, image=jpeg(64, 64))) == P.WRONG_CAPTION_COUNT
    # A training row with captions keeps them; its malformed sets are reported and left out.
    kept = run({"desc": ["a cat"], "sets": bad}, ANY, image=jpeg(64, 64))
    assert kept.record.desc == ("a cat",) and kept.record.sets == ()
    assert [r.set_index for r in kept.dropped_sets] == [0, 1]


def test_benchmark_metadata_is_kept_verbatim():
    fields = {"sets": [{"tag": "S", "gt": "g", "neg": list("abcd")}], "source_id": " 07",
              "image_name": "x y.jpg", "text": "  two  cats ", "version": "v3"}
    r = run(fields, BENCH, image=jpeg(64, 64)).record
    assert (r.source_id, r.image_name, r.text, r.version) == (" 07", "x y.jpg", "  two  cats ",
                                                              "v3")


def _saved(image: Image.Image, fmt: str, **save) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **save)
    return out.getvalue()


def test_kept_bytes_are_the_input_file():
    rgba = _saved(Image.new("RGBA", (10, 6), (0, 0, 0, 0)), "PNG")  # tiny and transparent
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    rotated = jpeg(80, 40, exif=exif.tobytes())
    cases = [  # (image, the source's EXIF rule, expected (width, height, exif_transpose))
        (rgba, True, (10, 6, False)),
        (rotated, False, (80, 40, False)),  # the JSONL path: the orientation is ignored
        (rotated, True, (40, 80, True)),  # the parquet path (datasets.Image): applied
        (jpeg(80, 40), True, (80, 40, False)),  # no Orientation tag: nothing to apply
    ]
    for data, rule, expected in cases:
        row = P.RawRow("f.jsonl:7", image_bytes=data, fields={"desc": ["a"]}, exif_transpose=rule)
        r = P.process_row(row, "test", ANY, P.EVAL_IMAGE_OPTIONS).record
        assert r.image == data and (r.width, r.height, r.exif_transpose) == expected
    whole = jpeg(300, 200)
    assert reason_of(run(image=whole[: len(whole) // 2], fmt=P.EVAL_IMAGE_OPTIONS)) == P.TRUNCATED
    assert reason_of(run(image=b"not an image", fmt=P.EVAL_IMAGE_OPTIONS)) == P.UNDECODABLE
    # Training data may keep its bytes too, with the training size checks.
    training = P.ImageOptions(keep_bytes=True)
    assert reason_of(run(image=jpeg(31, 200), fmt=training)) == P.TOO_SMALL
    assert run(image=whole, fmt=training).record.image == whole


def test_every_image_rejection(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "dir.jpg").mkdir()
    good = jpeg(300, 200)
    assert reason_of(run(path=str(tmp_path / "absent.jpg"))) == P.MISSING_FILE
    assert reason_of(run()) == P.MISSING_FILE
    assert reason_of(run(path=str(tmp_path / "dir.jpg"))) == P.UNREADABLE_FILE
    assert reason_of(run(path=str(tmp_path / "empty.jpg"))) == P.ZERO_BYTES
    assert reason_of(run(image=b"not an image at all")) == P.UNDECODABLE
    assert reason_of(run(image=good[: len(good) // 2])) == P.TRUNCATED
    assert reason_of(run(image=jpeg(31, 200))) == P.TOO_SMALL
    # Declared 8000 x 8000 = 64M pixels with no pixel data: refused from the header alone
    # (decoding would fail as truncated).
    assert reason_of(run(image=png_header_only(8000, 8000))) == P.TOO_LARGE
    # Beyond PIL's own hard limit too.
    assert reason_of(run(image=png_header_only(60000, 60000))) == P.TOO_LARGE


def test_every_caption_rejection():
    image = jpeg(64, 64)
    three = ["a", "b", "c"]
    cases = [
        ({"desc": ["ok", " \t "]}, ANY, P.EMPTY_CAPTION),
        ({"desc": [b"caf\xe9"]}, ANY, P.NON_UTF8),
        ({"desc": ["lone \udc80 surrogate"]}, ANY, P.NON_UTF8),
        ({"desc": three[:2], "reason": three}, STAGE1, P.WRONG_CAPTION_COUNT),
        ({"desc": three, "reason": three + ["d"]}, STAGE1, P.WRONG_CAPTION_COUNT),
        ({}, ANY, P.WRONG_CAPTION_COUNT),
        (
            {"cat_caption": "x", "cat_label": "X", "image_labels": ["S", "A", "H"]},
            STAGE2,
            P.UNKNOWN_LABEL,
        ),
        (
            {"cat_caption": "x", "cat_label": "S", "image_labels": ["S", "A", 7]},
            STAGE2,
            P.UNKNOWN_LABEL,
        ),
        (
            {"cat_caption": "x", "cat_label": "S", "image_labels": ["S", "A"]},
            STAGE2,
            P.WRONG_LABEL_COUNT,
        ),
        (
            {"cat_caption": "x", "cat_label": "S", "image_labels": ["S", "S", "A"]},
            STAGE2,
            P.WRONG_LABEL_COUNT,
        ),
        ({"cat_label": "S", "image_labels": ["S", "A", "H"]}, STAGE2, P.WRONG_CAPTION_COUNT),
        ({"sets": [{"tag": "S", "gt": "g", "neg": ["a", "b", "c"]}]}, ANY, P.BAD_SET),
        ({"desc": 5}, ANY, P.MALFORMED),
        ({"desc": [None]}, ANY, P.MALFORMED),
    ]
    for fields, schema, reason in cases:
        assert reason_of(run(fields, schema, image=image)) == reason, fields


def test_source_errors_pass_through():
    row = P.RawRow("f.parquet", error=(P.UNREADABLE_INPUT, "bad footer"))
    assert P.process_row(row, "s", ANY, OPTIONS) == P.Rejection(
        "f.parquet", P.UNREADABLE_INPUT, "bad footer"
    )


def test_ids_keys_and_placement():
    # sha256("a\0k:1") and sha256("b\0k:1"), first 32 hex digits: ids must never change,
    # or rebuilt shards would place and deduplicate rows differently.
    assert P.record_id("a", "k:1") == "190d104f4d72d5a29f09a1abc6da9da3"
    assert P.record_id("b", "k:1") == "8af12f31a3a2d036a212a10cf01e786c"
    keys = ["f:10", "f:9", "e:100", "f:9b", "f", "f:09", "x1²"]  # "²": a digit int() rejects
    assert sorted(keys, key=natural_key) == ["e:100", "f", "f:9", "f:09", "f:9b", "f:10", "x1²"]
    ids = [P.record_id("s", f"f:{i}") for i in range(4000)]
    places = [write.place(i, 4, 0.25, False) for i in ids]
    assert 850 < sum(s == "validation" for s, _ in places) < 1150
    assert {sh for _, sh in places} == {0, 1, 2, 3}
    assert write.place(ids[0], 4, 0.25, True)[0] == "test"


def test_stats_distribution_against_a_direct_computation():
    values = [3, 9, 9, 1, 12, 7, 7, 7, 30, 2]
    hist = {v: values.count(v) for v in set(values)}
    d = stats.distribution(hist)
    lower = lambda q: int(np.quantile(values, q, method="lower"))
    assert d == {
        "count": 10,
        "min": 1,
        "max": 30,
        "mean": round(float(np.mean(values)), 2),
        "p50": lower(0.5),
        "p95": lower(0.95),
    }
