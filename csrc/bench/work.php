<?php
// A script with some real work (about 0.3 ms): shows how throughput scales with PHP threads.
$sum = 0;
for ($i = 0; $i < 30000; $i++) {
    $sum += $i % 7;
}
echo $sum;
