"""The engine service keeps no tables: it holds only what it loads into memory."""
