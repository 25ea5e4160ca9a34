"""What both roles (front and application server) share about HTTP messages but is not
WSGI: request-body buffers and the fields every response head ends with."""
