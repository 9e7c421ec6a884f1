"""Stand-ins for the outside world of trading-sidecar, for its tests, benchmarks and demo.

    notion.NotionSimulator, naver.NaverSimulator, webhook.WebhookReceiver   loopback HTTP servers (base.SimServer)
    moto_s3.moto_s3()                                                     moto's S3 server, SigV4 checked
    s3proxy.S3FaultProxy                                                  faults in front of it
    process.SidecarProcess                                                a real sidecar in a child process

Nothing here imports the product (`client`, `sidecar`).
"""
