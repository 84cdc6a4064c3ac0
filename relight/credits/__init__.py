"""Credits: the price of a request, reservation at submit, refund when nothing was delivered."""
