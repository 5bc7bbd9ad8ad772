"""Qt GUI only: windows, viewport, panels; starts and stops workers."""
