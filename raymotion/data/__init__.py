"""Data stage: index class folders, decode/resize/augment on Ray Data CPU workers."""

from raymotion.data.folders import DataError, ImageFolders, index_image_folders
from raymotion.data.sources import (Sources, default_data_root, default_data_roots, is_generated, open_data,
                                    open_sources, resolve_data_root, resolve_data_roots)

__all__ = ["DataError", "ImageFolders", "Sources", "default_data_root", "default_data_roots", "index_image_folders",
           "is_generated", "open_data", "open_sources", "resolve_data_root", "resolve_data_roots"]
