"""Command-line interface: ``freqpure <command> ...``. Each command lives in its own module here."""
