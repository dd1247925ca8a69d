"""A test SMTP server: aiosmtpd storing every accepted mail in a Maildir.

Used by notify's tests and `cargo xtask bench notify`. It prints "ready" on
stdout once it accepts connections, and runs until killed.

    python3 smtp_server.py --port 2525 --maildir /tmp/mail \
        [--reject nobody@example.se] [--delay-ms 100]
"""

import argparse
import asyncio
import mailbox
import os
import signal
import sys

from aiosmtpd.controller import Controller


class MaildirHandler:
    def __init__(self, path, reject, delay):
        # Maildir(create=True) leaves an existing folder as it is, and tests
        # hand over an empty temporary one, so make the three subfolders here.
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(path, sub), exist_ok=True)
        self.box = mailbox.Maildir(path, create=False)
        self.reject = {address.lower() for address in reject}
        self.delay = delay

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        # A rejected recipient gets the reply a real server gives for an
        # unknown mailbox, so the client sees a permanent failure.
        if address.lower() in self.reject:
            return "550 5.1.1 <%s>: Recipient address rejected: mailbox unavailable" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        # The delay lets a test kill its client while a batch is under way.
        if self.delay:
            await asyncio.sleep(self.delay)
        # Maildir.add writes to tmp/ and renames into new/, so a reader never
        # sees half a mail.
        self.box.add(envelope.original_content)
        return "250 Message accepted for delivery"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--maildir", required=True)
    parser.add_argument("--reject", action="append", default=[])
    parser.add_argument("--delay-ms", type=int, default=0)
    args = parser.parse_args()
    handler = MaildirHandler(args.maildir, args.reject, args.delay_ms / 1000.0)
    controller = Controller(handler, hostname="127.0.0.1", port=args.port)
    controller.start()
    print("ready", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
