"""`trtserve serve --workers N`: a supervisor and N worker processes serving one port."""
