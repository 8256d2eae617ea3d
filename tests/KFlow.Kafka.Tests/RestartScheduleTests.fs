// Tests for src/KFlow.Kafka/RestartSchedule.fs: restart delays on a virtual clock (no wall time):
// they grow and cap as configured, and a healthy stretch resets them.
module KFlow.Kafka.Tests.RestartScheduleTests

open System
open Expecto
open KFlow.Kafka

let private s (n: float) = TimeSpan.FromSeconds n

/// Runs the schedule over incarnations that each ran `ranFor` before failing, on a virtual clock:
/// the delays chosen and the virtual time of every restart.
let private simulate (draw: float) (backoff: Backoff) (runs: TimeSpan list) =
    let _, _, out =
        runs
        |> List.fold
            (fun (schedule, clock: TimeSpan, acc) ranFor ->
                let next, delay = RestartSchedule.failed draw ranFor backoff schedule
                let restartAt = clock + ranFor + delay
                next, restartAt, acc @ [ delay, restartAt ])
            (RestartSchedule.start, TimeSpan.Zero, [])

    out

let tests =
    testList "RestartSchedule" [
        test "delays grow from First and cap at Max while the workflow keeps failing at once" {
            let backoff = {
                First = s 1.
                Max = s 8.
                Jitter = 0.
            }

            let out = simulate 0. backoff (List.replicate 6 TimeSpan.Zero)
            Expect.equal (out |> List.map fst) [ s 1.; s 2.; s 4.; s 8.; s 8.; s 8. ] "1, 2, 4, 8, 8, 8"
            Expect.equal (out |> List.map snd) [ s 1.; s 3.; s 7.; s 15.; s 23.; s 31. ] "restart times"
        }

        test "an incarnation that ran for Max without failing starts the delays again from First" {
            let backoff = {
                First = s 1.
                Max = s 8.
                Jitter = 0.
            }

            let out = simulate 0. backoff [ s 0.; s 0.; s 0.; s 8.; s 0. ]
            Expect.equal (out |> List.map fst) [ s 1.; s 2.; s 4.; s 1.; s 2. ] "reset after a healthy run"
        }

        test "jitter shortens each delay by at most its fraction" {
            let backoff = {
                First = s 1.
                Max = s 8.
                Jitter = 0.5
            }

            for draw in [ 0.; 0.25; 0.999 ] do
                for (delay, _), full in
                    List.zip (simulate draw backoff (List.replicate 5 TimeSpan.Zero)) [ 1.; 2.; 4.; 8.; 8. ] do
                    Expect.isLessThanOrEqual delay (s full) "never longer"
                    Expect.isGreaterThanOrEqual delay (s (full * 0.5)) "at most 50 % shorter"
        }

        test "the consecutive failures count what health reports" {
            let backoff = {
                First = s 1.
                Max = s 8.
                Jitter = 0.
            }

            let a, _ = RestartSchedule.failed 0. TimeSpan.Zero backoff RestartSchedule.start
            let b, _ = RestartSchedule.failed 0. TimeSpan.Zero backoff a
            Expect.equal b.ConsecutiveFailures 2 "two in a row"
            Expect.equal (RestartSchedule.healthy b).ConsecutiveFailures 0 "healthy again"
        }
    ]
