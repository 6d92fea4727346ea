"""One module per command; the scripts in the role folders and ``python -m eas_controller`` call them."""
