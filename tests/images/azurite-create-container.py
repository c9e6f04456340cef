#!/usr/bin/env python3
"""Creates a blob container in Azurite (object_store cannot): SharedKey auth with the
emulator's well-known account. Usage: azurite-create-container.py http://127.0.0.1:PORT NAME"""
import base64, datetime, hashlib, hmac, sys, urllib.request

ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
endpoint, container = sys.argv[1].rstrip("/"), sys.argv[2]
date = datetime.datetime.now(datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")
version = "2021-08-06"
string_to_sign = "\n".join([
    "PUT", "", "", "", "", "", "", "", "", "", "", "",
    f"x-ms-date:{date}\nx-ms-version:{version}",
    f"/{ACCOUNT}/{ACCOUNT}/{container}\nrestype:container",
])
signature = base64.b64encode(hmac.new(base64.b64decode(KEY), string_to_sign.encode(), hashlib.sha256).digest()).decode()
request = urllib.request.Request(
    f"{endpoint}/{ACCOUNT}/{container}?restype=container", method="PUT",
    headers={"x-ms-date": date, "x-ms-version": version, "Authorization": f"SharedKey {ACCOUNT}:{signature}", "Content-Length": "0"},
)
with urllib.request.urlopen(request) as response:
    assert response.status == 201, response.status
