"""The SQL side: table definitions (:mod:`.schema`) and dialect-aware connections (:mod:`.engine`)."""
