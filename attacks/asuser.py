"""Run a script as USER (with its supplementary groups) from root's venv: imports first, then drop privileges
(/root is 0700, so the venv's interpreter cannot be exec'd by another user). argv: USER SCRIPT ARGS..."""
import os, pwd, sys, fcntl, mmap, struct, errno, signal, atexit, weakref, logging, tempfile, ctypes, random, contextlib, dataclasses, select, selectors, queue, collections, functools, itertools, re, stat, hashlib, zlib
sys.path.insert(0, "/work/wt/attack")
import client, client.ring, client.core, client.transport, client.wire, orjson, zmq, uuid, socket, json, time, threading  # noqa
try:
    import client.blobs, client.blob_emit  # noqa
except ImportError:
    pass
user = pwd.getpwnam(sys.argv[1])
os.setgroups(os.getgrouplist(user.pw_name, user.pw_gid)); os.setgid(user.pw_gid); os.setuid(user.pw_uid)
os.chdir("/tmp")
sys.argv = sys.argv[2:]
code = compile(open(sys.argv[0]).read(), sys.argv[0], "exec")
exec(code, {"__name__": "__main__", "__file__": sys.argv[0]})
