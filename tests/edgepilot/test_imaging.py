"""The car's image operations without OpenCV give what OpenCV gives.

OpenCV is installed in this venv (training needs it), so each test computes the numpy
path (``imaging._cv2`` set to None, as on a car without OpenCV) and compares it with
OpenCV's own call on real simulator frames and on random pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgepilot import EdgepilotError, imaging
from edgepilot.drivelog import LogReader
from edgepilot.model.data import decode
from edgepilot.model.preprocess import (
    CAR_SPEC,
    DEFAULT_SPEC,
    InputSpec,
    adapt_input,
    preprocess,
    preprocess_u8,
)


@pytest.fixture
def no_opencv(monkeypatch):
    monkeypatch.setattr(imaging, "_cv2", None)
    assert imaging.backend() == "numpy"


@pytest.fixture(scope="module")
def frames(sample_logs) -> list[np.ndarray]:
    out = []
    for log in sample_logs:
        reader = LogReader(log)
        out += [reader.image(r) for r in reader.records()[::3]]
    assert len(out) >= 10 and out[0].shape == (120, 160, 3)
    return out


def random_images(n: int, shape: tuple[int, int]) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(n)]


def test_yuv_is_opencvs_bit_for_bit(no_opencv, frames):
    for img in frames + random_images(4, (66, 200)):
        assert np.array_equal(imaging.bgr_to_yuv(img), cv2.cvtColor(img, cv2.COLOR_BGR2YUV))


@pytest.mark.parametrize("size", [(200, 66), (160, 120), (320, 240), (161, 50), (240, 200)])
def test_two_tap_resize_is_opencvs_bit_for_bit(no_opencv, frames, size):
    """Every size with an enlargement in either direction: preprocess's 160x84 -> 200x66 first."""
    w, h = size
    for img in [f[36:] for f in frames] + random_images(3, (97, 131)):
        ours = imaging.resize_area(img, w, h)
        assert ours.shape == (h, w, 3) and ours.dtype == np.uint8
        assert np.array_equal(ours, cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA))


@pytest.mark.parametrize("size", [(80, 60), (40, 30), (100, 77), (33, 17)])
def test_shrinking_resize_is_within_one_grey_level(no_opencv, frames, size):
    w, h = size
    src = [cv2.resize(frames[0], (640, 480)), *[f[36:] for f in frames[:5]]]
    for img in src:
        ours = imaging.resize_area(img, w, h).astype(int)
        theirs = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA).astype(int)
        assert np.abs(ours - theirs).max() <= 1
        assert np.abs(ours - theirs).mean() < 0.05


def test_preprocess_without_opencv_gives_the_same_model_input(frames, monkeypatch):
    with_cv = [preprocess_u8(f, DEFAULT_SPEC) for f in frames]
    monkeypatch.setattr(imaging, "_cv2", None)
    assert all(
        np.array_equal(preprocess_u8(f, DEFAULT_SPEC), a) for f, a in zip(frames, with_cv, strict=True)
    )


def test_jpeg_decodes_as_opencv_did_and_round_trips(frames, sample_logs):
    reader = LogReader(sample_logs[0])
    for rec in reader.records()[:20]:
        data = reader.jpeg(rec)
        assert np.array_equal(
            imaging.decode_jpeg(data), cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        )
    img = frames[0]
    data = imaging.encode_jpeg(img, 90)
    ref = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
    assert abs(len(data) - len(ref)) <= 0.02 * len(ref)  # the same settings: 4:2:0, quality 90
    back = imaging.decode_jpeg(data)
    assert back.shape == img.shape and np.abs(back.astype(int) - img).mean() < 3.0


@pytest.mark.parametrize("kind", ["444", "422", "420", "progressive", "grey"])
def test_every_jpeg_kind_a_camera_writes_decodes_as_opencv_does(frames, kind):
    """Training decodes with the car's decoder (``edgepilot.model.data.decode``): the same
    pixels as OpenCV for the chroma layouts, progressive and greyscale JPEGs."""
    params = {
        "444": [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444],
        "422": [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422],
        "420": [],
        "progressive": [cv2.IMWRITE_JPEG_PROGRESSIVE, 1],
        "grey": [],
    }[kind]
    for img in [*frames[:5], *random_images(3, (120, 160))]:
        data = cv2.imencode(".jpg", img[..., 0] if kind == "grey" else img, params)[1].tobytes()
        ref = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert np.array_equal(decode(data), ref)


@pytest.mark.parametrize("data", [b"", b"garbage", b"\xff\xd8\xff" + b"0" * 100, b"\x89PNG\r\n\x1a\n"])
def test_undecodable_bytes_are_none(data):
    assert imaging.decode_jpeg(data) is None


@pytest.mark.parametrize("rotate", [0, 90, 180, 270])
@pytest.mark.parametrize("flips", [(False, False), (True, False), (False, True), (True, True)])
def test_orient_matches_opencv(rotate, flips):
    img = random_images(1, (12, 20))[0]
    flip_h, flip_v = flips
    ref = img
    if flip_h or flip_v:
        ref = cv2.flip(ref, -1 if flip_h and flip_v else 1 if flip_h else 0)
    codes = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
    if rotate:
        ref = cv2.rotate(ref, codes[rotate])
    out = imaging.orient(img, flip_h, flip_v, rotate)
    assert np.array_equal(out, ref) and out.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("size", [(200, 66), (160, 120), (320, 240), (161, 50), (240, 200), (80, 60)])
@pytest.mark.parametrize("yuv", [True, False])
def test_planar_resize_and_colour_is_opencvs_bit_for_bit(no_opencv, frames, size, yuv):
    """preprocess's one call: the block-matrix path where the taps repeat (160 -> 200, 160 ->
    240, 160 -> 320), resize_area's where they do not (161) or where it shrinks (80x60)."""
    w, h = size
    images = [f[36:] for f in frames] + random_images(3, (84, 160)) + [np.full((84, 160, 3), 255, np.uint8)]
    for img in images:
        theirs = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        theirs = cv2.cvtColor(theirs, cv2.COLOR_BGR2YUV) if yuv else theirs
        ours = imaging.resize_planar(img, w, h, yuv)
        assert ours.shape == (3, h, w) and ours.dtype == np.uint8
        if size == (80, 60):  # a shrink both ways: resize_area's box filter, one grey level,
            # which the colour step can turn into two (U and V take differences of channels)
            assert np.abs(ours.astype(int) - theirs.transpose(2, 0, 1)).max() <= (2 if yuv else 1)
        else:
            assert np.array_equal(ours, theirs.transpose(2, 0, 1))


def test_the_block_path_is_taken_where_the_taps_repeat():
    assert imaging._blocks(84, 160, 66, 200) is not None  # preprocess's default: 4 -> 5 per block
    assert imaging._blocks(84, 161, 66, 200) is None  # gcd 1: one block is the whole row, taps cross


@pytest.mark.parametrize("opencv", [True, False])
def test_the_cars_input_is_the_cropped_frame_not_resized(frames, monkeypatch, opencv):
    """CAR_SPEC takes a 160x120 frame's crop at its own size, only converted to YUV (the
    car's install spends ~0.1 ms on it instead of ~0.4 ms resizing to 66x200 without
    OpenCV), with OpenCV's bytes either way."""
    if not opencv:
        monkeypatch.setattr(imaging, "_cv2", None)
    top = round(120 * CAR_SPEC.crop_top)
    for f in frames:
        x = preprocess_u8(f, CAR_SPEC)
        assert x.shape == (3, 84, 160) and x.flags.c_contiguous
        assert np.array_equal(x, cv2.cvtColor(f[top:], cv2.COLOR_BGR2YUV).transpose(2, 0, 1))
    # a larger camera frame is shrunk to the same input
    assert preprocess_u8(cv2.resize(frames[0], (320, 240)), CAR_SPEC).shape == (3, 84, 160)


@pytest.mark.parametrize(
    "bad", [{"colour": "rgb"}, {"height": 0}, {"width": 1}, {"crop_top": 1.0}, {"crop_top": -0.1}]
)
def test_an_input_spec_that_is_no_image_is_refused(bad):
    with pytest.raises(EdgepilotError, match="input"):
        InputSpec(**{**CAR_SPEC.to_dict(), **bad})


def test_a_teachers_input_made_from_the_students_is_close_to_its_own(frames):
    """The edge model (66x200 YUV) teaching the car's net (160x84 YUV) sees the student's
    augmented batch made into its own input: within a grey level on average of what
    ``preprocess`` gives it, a few at edges (bilinear, not OpenCV's fixed point). And from
    a BGR student (an ``InputSpec`` option) the colours are converted too."""
    import torch

    x = torch.from_numpy(np.stack([preprocess(f, CAR_SPEC) for f in frames]))
    want = np.stack([preprocess(f, DEFAULT_SPEC) for f in frames])
    got = adapt_input(x, CAR_SPEC, DEFAULT_SPEC).numpy()
    levels = np.abs(got - want) * 127.5
    assert got.shape == want.shape
    assert levels.mean() < 1.0 and np.percentile(levels, 99) < 6.0
    assert adapt_input(x, CAR_SPEC, CAR_SPEC) is x
    bgr = InputSpec(**{**CAR_SPEC.to_dict(), "colour": "bgr"})
    xb = torch.from_numpy(np.stack([preprocess(f, bgr) for f in frames]))
    levels = np.abs(adapt_input(xb, bgr, DEFAULT_SPEC).numpy() - want) * 127.5
    assert levels.mean() < 1.5 and np.percentile(levels, 99) < 8.0
    # BGR taken for YUV (no colour step) is far off: the bound above can fail
    assert (np.abs(adapt_input(xb, CAR_SPEC, DEFAULT_SPEC).numpy() - want) * 127.5).mean() > 10
    with pytest.raises(EdgepilotError, match="cannot be fed"):
        adapt_input(torch.from_numpy(want), DEFAULT_SPEC, bgr)
