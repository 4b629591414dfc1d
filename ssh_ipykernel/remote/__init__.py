"""Code that runs on the remote host (shipped as source over ssh stdin; stdlib only)."""
