"""mmllm-imu: an ``imu`` modality (6-axis motion recordings), the ``imu-patch`` encoder and ``imu-synthetic`` data."""

from __future__ import annotations

from mmllm_sdk import hookimpl
from mmllm_sdk.plugins import Lazy

from mmllm_imu.modality import CHANNELS, IMU, load_imu, to_imu

__all__ = ["CHANNELS", "IMU", "load_imu", "to_imu"]


@hookimpl
def register_modalities(register):
    register(IMU)


@hookimpl
def register_encoders(register):
    register("imu", "imu-patch", Lazy("mmllm_imu.encoder:IMUPatchEncoder"))


@hookimpl
def register_datasets(register):
    register("imu-synthetic", Lazy("mmllm_imu.dataset:build_imu_dataset"))
