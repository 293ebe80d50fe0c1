"""Data stage: index class folders, decode/resize/augment on Ray Data CPU workers."""

from raymotion.data.folders import DataError, ImageFolders, index_image_folders
from raymotion.data.sources import default_data_root, is_generated, open_data, resolve_data_root

__all__ = ["DataError", "ImageFolders", "default_data_root", "index_image_folders", "is_generated", "open_data",
           "resolve_data_root"]
