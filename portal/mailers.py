"""Email backends of the portal.

Django writes a text body as quoted-printable as soon as one line passes 78 characters, which
breaks a long confirmation, invitation or password-reset link with a soft line break (``=`` at
the end of a line). A mail program joins it again; a person reading the console output copies
half a link and gets "Link not valid". The console backend here renders messages with lines of
up to SMTP's limit of 998 characters (RFC 5321, 4.5.3.1.6), so an ASCII body is written 7bit and
a UTF-8 body 8bit, line for line, and every link stays whole.
"""

import email.policy

from django.core.mail.backends import console

WHOLE_LINES = email.policy.default.clone(max_line_length=998)


class ConsoleEmailBackend(console.EmailBackend):
    """Writes each message to the console as a person reads it: no line split for transport."""

    def write_message(self, message):
        msg = message.message(policy=WHOLE_LINES)
        self.stream.write(f"{msg.as_bytes().decode('utf-8')}\n")
        self.stream.write("-" * 79)
        self.stream.write("\n")
