import os

# Before TensorFlow is first imported: keep its C++ start-up chatter out of the console.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
