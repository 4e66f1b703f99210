"""The contracts of the survey's five components, plus the modality description they share."""

from mmllm_sdk.components.encoder import ModalityEncoder
from mmllm_sdk.components.generator import ModalityGenerator
from mmllm_sdk.components.llm import LLMBackbone
from mmllm_sdk.components.modality import AudioClip, ModalitySpec, VideoClip
from mmllm_sdk.components.output_projector import ConditionSpec, OutputProjector
from mmllm_sdk.components.projector import InputProjector
from mmllm_sdk.components.signals import SignalVocabulary

__all__ = [
    "AudioClip",
    "ConditionSpec",
    "InputProjector",
    "LLMBackbone",
    "ModalityEncoder",
    "ModalityGenerator",
    "ModalitySpec",
    "OutputProjector",
    "SignalVocabulary",
    "VideoClip",
]
