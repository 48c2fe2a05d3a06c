"""Message counting as one unit: its SQL and row layouts (``sql``), the counter's state
and steps (``counter``), and the protocol that runs them (``collector``). Import from
the modules themselves (``mapping`` needs ``sql`` before ``collector`` can load)."""
