"""mitmproxy script entry point.

    mitmdump -s addon/entry.py --mode reverse:http://127.0.0.1:9 -p 8081 \
        --set connection_strategy=lazy --set keep_host_header=true --set aigw_data=data/aigw.json

(`mitmweb` takes the same arguments.) The reverse target is a placeholder: the addon makes every upstream call.
"""

from addon.gateway import GatewayAddon

addons = [GatewayAddon()]
