"""The operators' web page (`/admin/ui`): server-rendered views over `relight.ops`."""
