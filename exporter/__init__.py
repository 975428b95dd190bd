"""defender-connectivity-exporter: can Microsoft Defender Antivirus reach its cloud services from here?"""

__version__ = "0.1.0"
