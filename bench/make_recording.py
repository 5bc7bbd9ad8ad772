"""Owns making a RealSense recording of any posed source (the synthetic room by default) for the live benchmark.

The frames go through the SDK's software device (z16 depth, rgb8 colour, 30 frames/s) into the SDK's
own recorder, so the file is what a camera recording is (`.db3` with the installed SDK); the source's
ground-truth poses are written beside it as `NAME.groundtruth.txt` (TUM), which `bench.live_bench --gt`
reads. Run: `python -m bench.make_recording synthetic:7 --frames 300 --out /tmp/room.db3`.
Thread: the caller's.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger("bench")
DEPTH_SCALE_M = 0.001


class _SoftwareCamera:
    """An SDK software device with a z16 depth and an rgb8 colour stream of the given intrinsics."""

    def __init__(self, intrinsics, fps: int):
        import pyrealsense2 as rs

        self.rs, self.intr, self.fps = rs, intrinsics, fps
        self.dev = rs.software_device()
        self.dev.register_info(rs.camera_info.name, "Software D4xx (live_bench)")
        self.dev.register_info(rs.camera_info.serial_number, "0000")
        self.sensors, self.profiles, self._keep = {}, {}, []
        for kind, fmt, bpp, uid, name in (("depth", rs.format.z16, 2, 0, "Stereo Module"),
                                          ("color", rs.format.rgb8, 3, 1, "RGB Camera")):
            self.sensors[kind] = self.dev.add_sensor(name)
            self.profiles[kind] = self.sensors[kind].add_video_stream(self._stream(kind, fmt, bpp, uid))
        self.sensors["depth"].add_read_only_option(rs.option.depth_units, DEPTH_SCALE_M)
        ex = rs.extrinsics()
        ex.rotation, ex.translation = [1, 0, 0, 0, 1, 0, 0, 0, 1], [0, 0, 0]
        self.profiles["depth"].register_extrinsics_to(self.profiles["color"], ex)

    def _stream(self, kind, fmt, bpp, uid):
        rs, c = self.rs, self.intr
        s = rs.video_stream()
        s.type, s.index, s.uid, s.fmt, s.bpp, s.fps = getattr(rs.stream, kind), 0, uid, fmt, bpp, self.fps
        s.width, s.height = c.width, c.height
        i = rs.intrinsics()
        i.width, i.height, i.fx, i.fy, i.ppx, i.ppy = c.width, c.height, c.fx, c.fy, c.cx, c.cy
        i.model, i.coeffs = rs.distortion.none, [0.0] * 5
        s.intrinsics = i
        return s

    def start(self) -> None:
        for kind, sensor in self.sensors.items():
            sensor.open(self.profiles[kind])
            sensor.start(lambda f: None)

    def push(self, index: int, frame) -> None:
        rs = self.rs
        depth = np.round(np.asarray(frame.depth_m) / DEPTH_SCALE_M).clip(0, 65535).astype(np.uint16)
        for kind, pixels, bpp in (("depth", depth, 2), ("color", np.ascontiguousarray(frame.color), 3)):
            self._keep.append(pixels)  # the SDK reads the buffer after on_video_frame returns
            f = rs.software_video_frame()
            f.pixels, f.stride, f.bpp = pixels, self.intr.width * bpp, bpp
            f.timestamp, f.domain, f.frame_number = index * 1000.0 / self.fps, rs.timestamp_domain.hardware_clock, index
            f.profile = self.profiles[kind].as_video_stream_profile()
            self.sensors[kind].on_video_frame(f)
        del self._keep[:-8]

    def stop(self) -> None:
        for sensor in self.sensors.values():
            sensor.stop()
            sensor.close()


def make_recording(frames, out: Path, fps: int = 30) -> tuple[Path, Path | None]:
    """Record `frames` to `out` (the SDK's extension); returns (recording, ground-truth file or None)."""
    import pyrealsense2 as rs

    from fusion.recorder import recording_path
    from fusion.trajectory import write_tum

    path = recording_path(Path(out))
    path.parent.mkdir(parents=True, exist_ok=True)
    cam = _SoftwareCamera(frames[0].intrinsics, fps)
    recorder = rs.recorder(str(path), cam.dev)
    cam.start()
    for i, frame in enumerate(frames):
        cam.push(i, frame)
    cam.stop()
    del recorder  # closes the file
    gt = None
    if all(f.T_world_cam_gt is not None for f in frames):
        gt = path.with_name(path.stem + ".groundtruth.txt")
        write_tum(gt, [i / fps for i in range(len(frames))], [f.T_world_cam_gt for f in frames])
    return path, gt


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="any reconstruct source with ground-truth poses (default synthetic:7)",
                   nargs="?", default="synthetic:7")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    from fusion.errors import UserError
    from fusion.sources import open_source

    try:
        source = open_source(args.source, max_frames=args.frames)
        frames = list(source)
        source.close()
        if not frames:
            raise UserError(f"{args.source}: no frames")
        path, gt = make_recording(frames, args.out)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("wrote %d frames to %s%s", len(frames), path, f" (ground truth {gt})" if gt else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
