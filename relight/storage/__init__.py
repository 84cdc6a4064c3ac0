"""Blob storage for inputs and outputs, behind an interface an S3 store can implement later."""

from relight.storage.base import Storage, StoredObjectMissing
from relight.storage.filesystem import FileSystemStorage

__all__ = ["FileSystemStorage", "Storage", "StoredObjectMissing"]
