"""Small shared helpers every room uses and that use no room: one-line user errors (`errors`), atomic files
that follow the umask, digests and CSV (`io`), the one safe reader of user files (`safeload`), secrets by name
(`secrets`), the cores the process may use (`machine`), and lazy access to NeMo Evaluator Launcher's modules (`launcher`)."""
