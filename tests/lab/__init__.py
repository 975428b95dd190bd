"""The project's test lab: a generated PKI, asyncio servers on loopback, and a real Squid.

Imported as `lab` (pytest puts tests/ on sys.path because tests/ has no __init__.py):
    from lab.pki import LabPKI
    from lab.servers import LabServers, Ok, Files
    from lab.squid import Squid
"""
