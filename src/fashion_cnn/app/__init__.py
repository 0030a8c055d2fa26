"""The interfaces on top: the command line, the web server and its connection guard, ONNX export."""
