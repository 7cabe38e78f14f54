<?php
// Background worker of the demo: counts seconds since it booted and publishes the count in a
// state file the page reads.  Parks on frankenphp_get_worker_handle() and leaves its loop when
// frankenpy drains it (shutdown or restart).
$state = sys_get_temp_dir() . '/frankenpy-demo-' . getmypid() . '.json';
$handle = frankenphp_get_worker_handle();
$ticks = 0;
$started = microtime(true);
while (true) {
    file_put_contents($state . '.tmp', json_encode([
        'worker' => $_SERVER['FRANKENPHP_WORKER'],
        'ticks' => $ticks,
        'since' => $started,
    ]));
    rename($state . '.tmp', $state);
    $read = [$handle];
    $write = $except = [];
    if (stream_select($read, $write, $except, 1) > 0 && fread($handle, 1) === '') {
        break; // drained
    }
    $ticks++;
}
@unlink($state);
