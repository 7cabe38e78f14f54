<?php
$state = sys_get_temp_dir() . '/frankenpy-demo-' . getmypid() . '.json';
$data = is_file($state) ? json_decode(file_get_contents($state), true) : null;
header('Content-Type: text/html; charset=utf-8');
?>
<!doctype html>
<html>
<head><meta charset="utf-8"><meta http-equiv="refresh" content="2"><title>frankenpy demo</title></head>
<body>
<h1>frankenpy</h1>
<?php if ($data): ?>
<p>Background worker <code><?= htmlspecialchars($data['worker']) ?></code> has counted
<strong id="counter"><?= (int) $data['ticks'] ?></strong> seconds.</p>
<?php else: ?>
<p>The background worker has not published its counter yet.</p>
<?php endif ?>
<p>PHP <?= PHP_VERSION ?> (SAPI <?= PHP_SAPI ?>) in process <?= getmypid() ?>; this page runs in
classic mode, the counter in a background worker of the same process.</p>
<p><a href="/metrics">metrics</a></p>
</body>
</html>
