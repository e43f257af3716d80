"""DICOM ultrasound cine loops and screen/video captures: frames, spacing, times, image region, bad files.

The files are written here: pydicom writes multi-frame US DICOMs (with and without a Sequence of Ultrasound
Regions, RGB with a colour overlay, RLE and JPEG compressed), PyAV encodes an H.264 capture of a simulated
sweep inside a drawn scanner screen (border, text, ruler, a frame counter, a caliper over the image).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import av
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from freehandrecon.poses import metrics
from freehandrecon.commands.main import main
from freehandrecon.errors import InputError
from freehandrecon.io import read_sweep, sweep_format, write_sweep
from freehandrecon.io.region import detect_region, static_overlay_mask
from freehandrecon.simulate import random_sweep

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
FPS = 20
# a high-quality capture; the README tabulates the drift at CRF 0-23 (CRF 23, libx264's default, drifts ~2x)
H264 = {"codec": "libx264", "pix_fmt": "yuv420p", "crf": "12", "preset": "medium"}

# The scanner screen: 240 x 320 pixels, the 128 x 128 image at (x 112, y 64).
SCREEN = (240, 320)
IMAGE_AT = (112, 64)


# --- test files ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sim():
    return random_sweep("site-a", 3, 40, "linear", (128, 128))


def screen_frames(frames: np.ndarray, caliper: bool = True) -> np.ndarray:
    """The frames inside a scanner screen: a static border, text blocks, a depth ruler, a changing frame counter
    (small, apart from the image) and, over the image, a static caliper cross."""
    n = frames.shape[0]
    h, w = SCREEN
    x, y = IMAGE_AT
    screen = np.full((n, h, w), 24, np.uint8)
    screen[:, :4], screen[:, -4:], screen[:, :, :4], screen[:, :, -4:] = 200, 200, 200, 200  # border
    screen[:, 12:22, 12:90] = 230  # "text": patient name, preset
    screen[:, 28:36, 12:60] = 180
    screen[:, 12:22, 200:300] = 230
    screen[:, y:y + 128:8, x + 132:x + 140] = 255  # ruler ticks beside the image
    rng = np.random.default_rng(0)
    screen[:, 214:226, 20:44] = rng.integers(0, 255, (n, 12, 24), dtype=np.uint8)  # a changing frame counter
    screen[:, y:y + 128, x:x + 128] = frames
    if caliper:  # a '+' at image pixel (40, 50)
        screen[:, y + 50, x + 34:x + 47] = 255
        screen[:, y + 44:y + 57, x + 40] = 255
    return screen


def write_video(path: Path, screen: np.ndarray, fps: int = FPS) -> Path:
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(H264["codec"], rate=fps)
        stream.height, stream.width = screen.shape[1:]
        stream.pix_fmt = H264["pix_fmt"]
        stream.options = {"crf": H264["crf"], "preset": H264["preset"]}
        for img in screen:
            frame = av.VideoFrame.from_ndarray(np.repeat(img[..., None], 3, axis=-1), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def write_dicom(path: Path, frames: np.ndarray, *, region: dict | None = None, frame_time_ms: float | None = 50.0,
                frame_time_vector: list[float] | None = None, photometric: str = "MONOCHROME2",
                syntax=ExplicitVRLittleEndian, pixel_data: bool = True) -> Path:
    """A US Multi-frame Image Storage file of ``frames`` ([N, H, W] grey or [N, H, W, 3] RGB, uint8)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = US_MULTIFRAME
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = US_MULTIFRAME, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Manufacturer = "US", "FreehandRecon test"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    n, h, w = frames.shape[:3]
    ds.NumberOfFrames, ds.Rows, ds.Columns = n, h, w
    ds.SamplesPerPixel = 3 if frames.ndim == 4 else 1
    ds.PhotometricInterpretation = photometric
    if frames.ndim == 4:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if frame_time_ms is not None:
        ds.FrameTime = frame_time_ms
        ds.FrameIncrementPointer = 0x00181063
    if frame_time_vector is not None:
        ds.FrameTimeVector = frame_time_vector
        ds.FrameIncrementPointer = 0x00181065
    if region is not None:
        item = Dataset()
        item.RegionSpatialFormat, item.RegionDataType, item.RegionFlags = 1, 1, 0
        item.RegionLocationMinX0, item.RegionLocationMinY0 = region["x0"], region["y0"]
        item.RegionLocationMaxX1, item.RegionLocationMaxY1 = region["x1"], region["y1"]
        item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = 3  # cm
        item.PhysicalDeltaX, item.PhysicalDeltaY = region["dx_cm"], region["dy_cm"]
        ds.SequenceOfUltrasoundRegions = [item]
    if pixel_data:
        ds.PixelData = np.ascontiguousarray(frames).tobytes()
        if syntax != ExplicitVRLittleEndian:
            ds.compress(syntax)
    ds.save_as(path, enforce_file_format=True)
    return path


REGION = {"x0": 112, "y0": 64, "x1": 239, "y1": 191, "dx_cm": 0.032, "dy_cm": 0.0276}


@pytest.fixture(scope="module")
def files(tmp_path_factory, sim):
    d = tmp_path_factory.mktemp("scanner")
    screen = screen_frames(sim.frames[:12])
    return {"dir": d, "screen": screen,
            "cine": write_dicom(d / "cine.dcm", screen, region=REGION),
            "bare": write_dicom(d / "bare.dcm", screen, region=None, frame_time_ms=None,
                                frame_time_vector=[0.0] + [40.0] * 5 + [60.0] * 6),
            "video": write_video(d / "capture.mp4", screen_frames(sim.frames))}


# --- DICOM ----------------------------------------------------------------------------------------

def test_dicom_with_regions_gives_frames_spacing_times_and_region(files):
    s = read_sweep(files["cine"])
    x, y = IMAGE_AT
    assert s.num_frames == 12 and s.frame_shape == (128, 128)
    np.testing.assert_array_equal(s.frames, files["screen"][:, y:y + 128, x:x + 128])  # unchanged, only cropped
    assert s.pixel_spacing == pytest.approx((0.32, 0.276))
    np.testing.assert_allclose(s.timestamps, np.arange(12) * 0.05)
    region = s.metadata["image_region"]
    assert (region["x"], region["y"], region["width"], region["height"]) == (112, 64, 128, 128)
    assert region["source"] == "DICOM ultrasound region" and region["shape"] == "rectangle"
    assert s.metadata["pixel_spacing_known"] is True and s.metadata["pixel_spacing_source"] == "SequenceOfUltrasoundRegions"
    assert s.metadata["sop_class"] == "Ultrasound Multi-frame Image Storage"
    assert s.metadata["static_overlay_pixels"] > 0  # the caliper (and the grown rim around it)


def test_dicom_without_regions_detects_the_image_and_reads_the_frame_time_vector(files):
    with pytest.warns(UserWarning, match="pixel spacing"):
        s = read_sweep(files["bare"])
    region = s.metadata["image_region"]
    assert region["source"] == "detected" and region["shape"] == "rectangle"
    assert (region["x"], region["y"], region["width"], region["height"]) == (112, 64, 128, 128)
    assert s.metadata["pixel_spacing_known"] is False
    np.testing.assert_allclose(s.timestamps, np.cumsum([0.0] + [40.0] * 5 + [60.0] * 6) / 1000)
    # poses refuse to run without the spacing; --pixel-spacing gives it
    from freehandrecon.poses import estimate_poses

    with pytest.raises(InputError, match="pixel spacing"):
        estimate_poses(s, "speckle")
    assert read_sweep(files["bare"], pixel_spacing=(0.3, 0.3)).pixel_spacing == (0.3, 0.3)


def test_enhanced_us_cine_takes_the_spacing_from_its_functional_groups(files, tmp_path):
    path = write_dicom(tmp_path / "enhanced.dcm", files["screen"], region=None, frame_time_ms=40.0)
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.2"  # Enhanced US Volume
    measures, shared = Dataset(), Dataset()
    measures.PixelSpacing = [0.25, 0.3]  # rows, columns
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.save_as(path, enforce_file_format=True)
    s = read_sweep(path)
    assert s.pixel_spacing == pytest.approx((0.3, 0.25)) and s.metadata["pixel_spacing_source"] == "PixelSpacing"
    assert s.metadata["sop_class"] == "Enhanced US Volume Storage" and s.frame_shape == (128, 128)
    np.testing.assert_allclose(s.timestamps, np.arange(12) * 0.04)


def test_crop_overrides_the_region(files):
    s = read_sweep(files["cine"], crop=(120, 70, 64, 50))
    np.testing.assert_array_equal(s.frames, files["screen"][:, 70:120, 120:184])
    assert s.metadata["image_region"]["source"] == "crop"
    with pytest.raises(InputError, match="does not lie inside"):
        read_sweep(files["cine"], crop=(300, 0, 64, 64))


def test_rgb_dicom_is_grey_with_the_colour_overlay_filled(files):
    grey = files["screen"]
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    x, y = IMAGE_AT
    box = (slice(None), slice(y + 80, y + 90), slice(x + 60, x + 100))
    rgb[box] = (0, 60, 230)  # a blue label over the image
    path = write_dicom(files["dir"] / "rgb.dcm", rgb, photometric="RGB", region=REGION)
    s = read_sweep(path)
    assert s.frames.dtype == np.uint8 and s.frames.ndim == 3
    assert s.metadata["colour_overlay_fraction"] == pytest.approx(10 * 40 / 128 ** 2, abs=1e-5)
    label = s.frames[:, 80:90, 60:100].astype(float)
    truth = grey[:, y + 80:y + 90, x + 60:x + 100].astype(float)
    blue = 0.587 * 60 + 0.114 * 230
    # filled from the speckle around: near the speckle's level, far from the label's own luma
    assert abs(label.mean() - truth.mean()) < 25 and abs(label.mean() - blue) > 60
    outside = np.ones((128, 128), bool)
    outside[80:90, 60:100] = False
    np.testing.assert_array_equal(s.frames[:, outside], grey[:, y:y + 128, x:x + 128][:, outside])


def test_rle_and_jpeg_ybr_compressed_dicoms_decode(files):
    rle = write_dicom(files["dir"] / "rle.dcm", files["screen"], region=REGION, syntax=RLELossless)
    s = read_sweep(rle)
    assert s.metadata["transfer_syntax"] == "RLE Lossless"
    np.testing.assert_array_equal(s.frames, read_sweep(files["cine"]).frames)
    # lossy JPEG as ultrasound scanners store colour cines: YCbCr 4:2:2 frames (Pillow encodes them)
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    rgb = np.repeat(files["screen"][..., None], 3, axis=-1)
    jpeg = write_dicom(files["dir"] / "jpeg.dcm", rgb, photometric="RGB", region=REGION)
    ds = pydicom.dcmread(jpeg)
    fragments = []
    for frame in rgb:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=90, subsampling=1)
        fragments.append(buf.getvalue())
    ds.PixelData = encapsulate(fragments)
    ds["PixelData"].VR = "OB"
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(jpeg, enforce_file_format=True)
    s = read_sweep(jpeg)
    assert s.metadata["transfer_syntax"] == "JPEG Baseline (Process 1)"
    assert s.metadata["photometric_interpretation"] == "YBR_FULL_422"
    x, y = IMAGE_AT
    diff = np.abs(s.frames.astype(int) - files["screen"][:, y:y + 128, x:x + 128])
    assert np.median(diff) <= 6 and s.metadata["colour_overlay_fraction"] < 0.01


def test_dicom_file_without_extension_is_recognised(files, tmp_path):
    plain = tmp_path / "IM000001"
    plain.write_bytes(files["cine"].read_bytes())
    assert sweep_format(plain) == "dicom"
    assert read_sweep(plain).frame_shape == (128, 128)


@pytest.mark.parametrize("case", ["truncated", "no pixel data", "zero spacing", "unsupported compression",
                                  "single frame", "not dicom"])
def test_bad_dicoms_give_clear_input_errors(files, tmp_path, case):
    screen = files["screen"]
    path = tmp_path / "bad.dcm"
    if case == "truncated":
        data = files["cine"].read_bytes()
        path.write_bytes(data[:len(data) // 2])
        match = "truncated|damaged"
    elif case == "no pixel data":
        write_dicom(path, screen, region=REGION, pixel_data=False)
        match = "no Pixel Data"
    elif case == "zero spacing":
        write_dicom(path, screen, region=dict(REGION, dx_cm=0.0))
        match = "not a spacing"
    elif case == "unsupported compression":
        write_dicom(path, screen, region=REGION)
        ds = pydicom.dcmread(path)
        from pydicom.encaps import encapsulate
        from pydicom.uid import MPEG4HP41

        ds.PixelData = encapsulate([b"\x00\x00\x00\x01" + bytes(64)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = MPEG4HP41
        ds.save_as(path, enforce_file_format=True)
        match = "MPEG-4 AVC/H.264.*cannot decode"
    elif case == "single frame":
        write_dicom(path, screen[:1], region=REGION)
        match = "single image"
    else:
        path.write_bytes(b"\x00" * 200)
        match = "not a DICOM file"
    with pytest.raises(InputError, match=match) as e:
        read_sweep(path)
    assert e.value.fix


def test_zero_region_spacing_is_no_error_with_the_override(files, tmp_path):
    path = write_dicom(tmp_path / "zero.dcm", files["screen"], region=dict(REGION, dx_cm=0.0))
    assert read_sweep(path, pixel_spacing=(0.2, 0.25)).pixel_spacing == (0.2, 0.25)


def test_missing_decoder_names_the_package(files, tmp_path):
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    path = write_dicom(tmp_path / "jls.dcm", files["screen"], region=REGION)
    ds = pydicom.dcmread(path)
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(32)] * ds.NumberOfFrames)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(InputError, match="JPEG-LS") as e:
        read_sweep(path)
    if not get_decoder(JPEGLSLossless).is_available:  # else: a decoder is installed and these bytes are damaged
        assert "pylibjpeg" in e.value.fix and "pyjpegls" in e.value.fix


# --- video ----------------------------------------------------------------------------------------

def test_video_gives_frames_timestamps_and_the_detected_region(files, sim):
    s = read_sweep(files["video"], pixel_spacing=sim.pixel_spacing)
    region = s.metadata["image_region"]
    assert (region["x"], region["y"], region["width"], region["height"]) == (112, 64, 128, 128)
    assert region["source"] == "detected" and region["shape"] == "rectangle"
    assert s.num_frames == 40 and s.frames.dtype == np.uint8
    np.testing.assert_allclose(s.timestamps, np.arange(40) / FPS, atol=1e-6)
    assert s.pixel_spacing == pytest.approx(sim.pixel_spacing)
    assert s.metadata["codec"] == "h264" and s.metadata["format"] == "video"
    # lossy, but close to the simulated frames (except under the caliper)
    diff = np.abs(s.frames.astype(int) - sim.frames)
    assert np.median(diff) <= 6
    mask = static_overlay_mask(s.frames)
    assert mask[50, 34:47].all() and mask[44:57, 40].all()  # the caliper is found as a static overlay
    assert mask.sum() < 200


def test_video_without_pixel_spacing_refuses_poses_and_crop_works(files):
    s = read_sweep(files["video"], crop=(112, 64, 128, 128))
    assert s.metadata["pixel_spacing_known"] is False and s.metadata["image_region"]["source"] == "crop"
    from freehandrecon.poses import estimate_poses

    with pytest.raises(InputError, match="pixel spacing of this sweep is unknown") as e:
        estimate_poses(s, "learned")
    assert "--pixel-spacing" in e.value.fix


def test_detect_region_finds_a_fan():
    """A curvilinear image: the changing pixels form a sector; the region is its bounding box and the fan."""
    n = 20
    h, w = 160, 200
    jj, ii = np.mgrid[0:h, 0:w]
    apex = (100.0, 10.0)
    r = np.hypot(ii - apex[0], jj - apex[1])
    angle = np.degrees(np.arctan2(ii - apex[0], jj - apex[1]))
    inside = (np.abs(angle) < 35) & (r > 20) & (r < 140)
    rng = np.random.default_rng(1)
    frames = np.where(inside, rng.integers(30, 255, (n, h, w)), 10).astype(np.uint8)
    frames[:, 150:156, 5:60] = 250  # static text
    region = detect_region(frames)
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    assert abs(region["x"] - cols[0]) <= 1 and abs(region["x"] + region["width"] - 1 - cols[-1]) <= 1
    assert abs(region["y"] - rows[0]) <= 1 and abs(region["y"] + region["height"] - 1 - rows[-1]) <= 1
    assert region["shape"] == "fan"
    fan = region["fan"]
    assert fan["angles_deg"][0] == pytest.approx(-35, abs=3) and fan["angles_deg"][1] == pytest.approx(35, abs=3)
    assert fan["origin_px"][0] + region["x"] == pytest.approx(apex[0], abs=3)


@pytest.mark.parametrize("case", ["no frames", "no video stream", "not a video", "truncated", "one frame"])
def test_bad_videos_give_clear_input_errors(tmp_path, files, case):
    path = tmp_path / ("bad.avi" if case == "no frames" else "bad.mp4")
    if case in ("no frames", "no video stream"):  # a header and no frame (FFmpeg drops the empty MP4 stream)
        with av.open(str(path), mode="w") as out:
            stream = out.add_stream("libx264", rate=FPS)
            stream.height, stream.width, stream.pix_fmt = 64, 64, "yuv420p"
            out.start_encoding()
        match = "has no video frame" if case == "no frames" else "has no video stream"
    elif case == "not a video":
        path.write_bytes(b"this is not a video" * 50)
        match = "cannot be opened as a video"
    elif case == "truncated":
        data = files["video"].read_bytes()
        path.write_bytes(data[:len(data) // 2])
        match = "cannot be opened as a video"
    else:
        write_video(path, np.zeros((1, 64, 64), np.uint8))
        match = "1 video frame"
    with pytest.raises(InputError, match=match) as e:
        read_sweep(path)
    assert e.value.fix


def test_dicom_and_video_are_read_only(tmp_path, sim):
    for name in ("out.dcm", "out.mp4"):
        with pytest.raises(InputError, match="does not write"):
            write_sweep(sim, tmp_path / name)


def test_crop_is_refused_for_other_formats(tmp_path, sim):
    path = write_sweep(sim, tmp_path / "s.npz")
    with pytest.raises(InputError, match="--crop applies to DICOM and video"):
        read_sweep(path, crop=(0, 0, 10, 10))


# --- sensorless poses on the compressed capture ----------------------------------------------------

def _final_drift_rate(sim, sweep, method):
    from freehandrecon.poses import estimate_poses
    from freehandrecon.poses.speckle import curve_for

    curve = curve_for(sim, None, beam_model=True)  # the simulated probe's curve, for both inputs alike
    est = estimate_poses(sweep, method, curve=curve, sweep_direction="forward" if sim.metadata["sweep_direction"] > 0
                         else "backward", first=sim.image_to_world[0])
    return metrics.final_drift_rate_length_pct(sim.image_to_world, est.image_to_world, sim.frame_shape,
                                               sim.pixel_spacing)


def test_learned_poses_on_the_h264_capture_stay_near_those_on_the_original_frames(files, sim):
    video = read_sweep(files["video"], pixel_spacing=sim.pixel_spacing)
    original = _final_drift_rate(sim, sim, "learned")
    captured = _final_drift_rate(sim, video, "learned")
    print(f"learned final drift rate: original {original:.2f} %, H.264 capture {captured:.2f} %")
    assert captured <= 1.5 * original


# --- command line ---------------------------------------------------------------------------------

def test_cli_reconstructs_a_dicom_cine(files, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["--quiet", "reconstruct", str(files["cine"]), "--poses", "learned",
                 "--no-render", "--no-mrb", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert (out / "volume.nrrd").stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    assert report["input"]["image_region"]["source"] == "DICOM ultrasound region"
    assert report["frame_size"] == [128, 128] and "quality" in report


def test_cli_reconstructs_a_video_capture_and_converts_it(files, sim, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["--quiet", "reconstruct", str(files["video"]), "--pixel-spacing", "0.2", "0.2", "--poses", "learned",
                 "--no-render", "--no-mrb", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert (out / "volume.nrrd").stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    assert report["input"]["image_region"]["width"] == 128 and report["pixel_spacing_mm"] == [0.2, 0.2]
    capsys.readouterr()
    assert main(["info", str(files["video"]), "--pixel-spacing", "0.2", "0.2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["frame_size"] == [128, 128] and "'detected'" in info["metadata"]["image_region"]
    assert info["duration_s"] == pytest.approx(39 / FPS)
    for name in ("capture.seq.nrrd", "capture.igs.mha"):
        assert main(["--quiet", "convert", str(files["video"]), str(tmp_path / name), "--pixel-spacing", "0.2",
                     "0.2"]) == 0
        back = read_sweep(tmp_path / name)
        assert back.num_frames == 40 and back.frame_shape == (128, 128)
        assert back.pixel_spacing == pytest.approx((0.2, 0.2))
    capsys.readouterr()
    assert main(["info", str(files["video"]), "--crop", "0", "0", "999", "10"]) == 2
    assert "does not lie inside" in capsys.readouterr().err
