"""The encoder LLM: item text -> T_S embedding tokens, plus model bundles and pretrained weights."""

from mixlm.encoders.bundle import init_bundle, init_tiny_bundle, model_path
from mixlm.encoders.config import BundleConfig, ModelRef, PromptTemplate
from mixlm.encoders.item_encoder import EncodedItem, ItemEncoder

__all__ = ["BundleConfig", "EncodedItem", "ItemEncoder", "ModelRef", "PromptTemplate", "init_bundle",
           "init_tiny_bundle", "model_path"]
