from twisted.application.service import ServiceMaker

FrameServer = ServiceMaker(
    "twisted-frames server",
    "twisted_frames.tap",
    "Length-prefixed JSON header + body protocol: ping, files, commands, UDP echo.",
    "frameserver",
)
