#!/usr/bin/env python3
"""A stand-in for a site's DNS server, for the service-discovery tests.

Listens on ADDR:PORT (UDP and TCP). Every A query gets 203.0.113.7, except
`large.example.`, which gets 40 records: over UDP without EDNS that does not
fit in 512 bytes, so the answer is cut (TC set) and the client must ask
again over TCP. `slow.example.` is never answered.
"""
import socket
import socketserver
import struct
import sys
import threading


def answer(query, over_tcp):
    ident, _flags, qdcount = struct.unpack(">HHH", query[:6])
    end = 12
    labels = []
    while query[end] != 0:
        length = query[end]
        labels.append(query[end + 1:end + 1 + length].decode().lower())
        end += 1 + length
    question = query[12:end + 5]
    name = ".".join(labels)
    if name == "slow.example":
        return None
    addresses = [f"203.0.113.{i + 1}" for i in range(40)] if name == "large.example" else ["203.0.113.7"]
    records = b"".join(
        b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(address) for address in addresses
    )
    flags = 0x8180
    count = len(addresses)
    if not over_tcp and 12 + len(question) + len(records) > 512:
        flags |= 0x0200
        records, count = b"", 0
    return struct.pack(">HHHHHH", ident, flags, qdcount, count, 0, 0) + question + records


class Udp(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        reply = answer(data, False)
        if reply:
            sock.sendto(reply, self.client_address)


class Tcp(socketserver.BaseRequestHandler):
    def handle(self):
        length = struct.unpack(">H", self.request.recv(2))[0]
        data = b""
        while len(data) < length:
            data += self.request.recv(length - len(data))
        reply = answer(data, True)
        if reply:
            self.request.sendall(struct.pack(">H", len(reply)) + reply)


if __name__ == "__main__":
    address = (sys.argv[1], int(sys.argv[2]))
    socketserver.ThreadingUDPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    udp = socketserver.ThreadingUDPServer(address, Udp)
    tcp = socketserver.ThreadingTCPServer(address, Tcp)
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    print("ready", flush=True)
    udp.serve_forever()
