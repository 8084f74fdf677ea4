"""The delivery lifecycle: sending a message (``send_message``), the state machine in
PostgreSQL that allows one provider call per delivery (``store``), the chunked send job and
the sweeps that settle what a fault left in doubt (``jobs``)."""
