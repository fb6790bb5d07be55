"""An HTTP server for many tasks on one backbone."""
