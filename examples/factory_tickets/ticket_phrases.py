"""The factory-tickets generator's vocabulary: facts as data, one table per kind of phrase.

Fault phrases are fragments that read well both as "CNC-07 <fault>" and "<fault> on CNC-07".
Each fault lists the impacts it can have: S stopped now, X producing scrap, D degraded but
running, R stopped earlier and running again. Slots: {code} a drive/robot fault code,
{alarm} an alarm text, {sid} a sensor id, {n} a number. No phrase may contain a tag-shaped
token (2-6 letters, dash, digits): the only tags in a ticket are the asset and the bystander.
"""

# category -> [(fault fragment, impacts)]
FAULTS = {
    "electrical": [
        ("main breaker tripped", "SR"), ("breaker keeps tripping", "SDR"), ("blown fuse in the panel", "S"),
        ("fuse F{n} blown again", "SR"), ("VFD showing fault {code}", "SRD"), ("drive faulted on overcurrent", "SRD"),
        ("motor tripping on overcurrent", "DRS"), ("motor windings burnt, megger reads low", "S"),
        ("no power to the cabinet", "S"), ("contactor chattering", "DS"), ("loose wire on the motor terminal", "DS"),
        ("main contactor won't pull in", "S"), ("24V supply dropping out", "DSR"),
        ("conveyor motor humming but not turning", "S"), ("phase loss alarm on the drive", "SR"),
        ("overload relay tripped on the pump motor", "SR"), ("spindle drive fault {code}", "SR"),
        ("motor running hot, drive current way up", "D"), ("cable to the motor chafed through", "S"),
        ("lights on the panel flickering, drive resets", "DR"),
    ],
    "mechanical": [
        ("main bearing grinding", "SD"), ("spindle bearing noisy", "D"), ("gearbox making a grinding noise", "DS"),
        ("drive belt slipping", "DX"), ("timing belt worn", "DX"), ("belt snapped", "S"),
        ("chain came off the sprocket", "S"),
        ("chain stretched, skipping teeth", "DXS"), ("coupling worn, lots of play", "DS"),
        ("shaft misaligned, vibrating", "DX"), ("heavy vibration on the gearbox", "DS"),
        ("jammed, parts stuck in the infeed", "S"), ("keeps jamming at the transfer", "SDR"),
        ("mounting bracket cracked", "DS"), ("broken bracket on the guide rail", "SD"),
        ("gearbox oil seal leaking", "DS"), ("oil dripping from the gearbox seal", "D"),
        ("gear box output seal weeping oil", "D"), ("worn guide rail, parts catching", "XD"),
        ("knocking noise from the crank", "DS"), ("clamp jaws worn, parts slipping", "X"),
        ("roller seized", "S"), ("idler pulley squealing", "D"), ("sprocket teeth worn", "DX"),
        ("cam follower broken", "S"),
    ],
    "hydraulic": [
        ("hydraulic hose leaking at the fitting", "DS"), ("hyd hose burst", "S"), ("hydraulic pressure low", "DSX"),
        ("hyd pressure dropping during the cycle", "DX"), ("hydraulic pump whining", "D"),
        ("hyd pump not building pressure", "S"), ("hydraulic oil temp high, {n}C on the unit", "DSR"),
        ("hyd oil level low, topped up {n}L", "D"), ("cylinder drifting down", "DXS"),
        ("main cylinder leaking past the seals", "DS"), ("hydraulic unit overheating", "DSR"),
        ("clamp cylinder slow", "DX"), ("puddle of hydraulic oil under the power unit", "DS"),
        ("hydraulic filter clogged, pressure alarm", "DR"), ("relief valve chattering on the hyd unit", "D"),
        ("ram not holding pressure", "XS"),
    ],
    "pneumatic": [
        ("air leak hissing at the manifold", "D"), ("big air leak on the main line", "DS"),
        ("compressed air pressure low, {n} bar", "DSX"), ("pneumatic cylinder sticking", "DXS"),
        ("air cylinder not extending", "S"), ("solenoid valve stuck", "SDR"), ("regulator won't hold pressure", "DX"),
        ("air dryer fault, water in the lines", "D"), ("water in the air lines", "DX"), ("gripper losing air", "XDS"),
        ("blow-off nozzle leaking air", "D"), ("valve bank leaking air", "D"),
        ("no air at all on the main header", "S"),
        ("pneumatic clamp not closing", "S"), ("quick coupler on the air line leaking", "D"),
    ],
    "control": [
        ("PLC in fault, red light on the CPU", "S"), ("PLC lost comms with the drive", "SR"), ("HMI frozen", "SDR"),
        ("HMI screen black, machine still responds", "D"), ("wrong recipe loaded", "X"),
        ("recipe parameters reset after a power cycle", "XS"), ("program crashed, watchdog fault", "SR"),
        ("network keeps dropping, robot loses connection", "DRS"), ("alarm '{alarm}' but sensors checked ok", "DR"),
        ("software update broke the part counter", "D"), ("comm fault to the remote IO rack", "SR"),
        ("robot controller error {code}", "SR"), ("SCADA not showing data", "D"), ("batch count wrong on the HMI", "D"),
        ("PLC program lost its offsets", "XS"), ("touch screen not responding", "DS"),
    ],
    "sensor": [
        ("prox switch {sid} not switching", "SXD"), ("limit switch on the door not making", "S"),
        ("encoder counts drifting", "XD"), ("encoder giving garbage", "SX"),
        ("vision camera rejecting good parts", "XD"),
        ("vision camera not triggering", "S"), ("thermocouple reading 0", "SD"),
        ("thermocouple reading way high, oven itself is fine", "DX"), ("level sensor stuck", "DS"),
        ("photo eye {sid} misaligned, sees nothing", "SDR"), ("pressure transducer drifting", "DX"),
        ("home sensor not detecting", "S"), ("part-present sensor flickering", "DR"),
        ("temp probe reading drifts 20 degrees", "DX"), ("load cell reading wrong weights", "X"),
    ],
}
# a failed sensor often shows up as a PLC alarm or a stop; the category stays sensor
SENSOR_ALARMS = ["PLC alarm '{alarm}'", "HMI says '{alarm}'", "PLC throws '{alarm}'", "alarm on the panel: '{alarm}'"]

# danger to people: safety and critical whatever else is true (some look electrical or hydraulic)
DANGER = [
    "safety guard cracked", "guard missing on the infeed", "guard door interlock bypassed with a zip tie",
    "light curtain not stopping the ram", "e-stop button doesn't stop the machine", "e-stop broken off",
    "operator cut his hand on the blade", "operator got a finger pinched in the clamp",
    "near miss: part flew out of the chuck", "near miss, forklift nearly hit someone by the infeed",
    "smoke coming out of the motor", "small fire in the control cabinet, put out with the extinguisher",
    "burning smell and smoke from the VFD", "hydraulic hose burst and sprayed oil on an operator",
    "air hose whipped loose and nearly hit someone", "lockout point missing on the main disconnect",
    "someone removed a lock during LOTO", "door interlock not working, runs with the door open",
    "two-hand control bypassed", "sparks coming out of the panel", "hot oil sprayed, operator burned his arm",
    "guard rail came loose, someone almost fell", "safety mat not detecting people",
]

IMPACTS = {
    "S": ["line down", "machine is down", "it's stopped", "we had to stop it", "not running", "down since {time}",
          "whole line stopped", "won't start", "dead", "locked out until fixed", "shut it down", "cell is stopped",
          "production stopped", "stopped at {time}", "mc down", "no output, line stopped", "line {line} down",
          "we're down", "machine won't cycle"],
    "X": ["making scrap", "parts out of tolerance", "rejects piling up", "every part failing QC",
          "bad parts coming off", "scrapped {n} pcs so far", "dims out, QC flagged it", "all parts NG"],
    "D": ["still running", "running but slow", "running at reduced speed", "cycle time up {n}%",
          "keeps running for now", "slowing the line down", "comes and goes", "happens every hour or so",
          "we can keep going for now", "running, just not right", "intermittent, still producing"],
    "R": ["was down {n} min, reset it and it's running again", "stopped earlier, restarted ok",
          "happened twice this morning, running now", "back up after a reset", "line was down at {time}, running again",
          "cleared it, machine back in production"],
}
DANGER_STOPPED = ["hit the e-stop, everything stopped", "shut down and tagged out", "area taped off, line down",
                  "LOTO'd, line is stopped", "stopped the machine", "line down until safety checks it"]
DANGER_RUNNING = ["still running!", "production wants to keep running", "machine is still running",
                  "supervisor says keep running", ""]

# low: no current impact. category -> parts, preventive work, questions
PARTS = {
    "electrical": ["fuses", "contactors", "a spare breaker", "motor brushes", "a spare VFD"],
    "mechanical": ["belts", "bearings", "chain links", "couplings", "gearbox oil seals"],
    "hydraulic": ["hydraulic hoses", "hyd filters", "a seal kit for the cylinder", "hydraulic oil"],
    "pneumatic": ["air fittings", "solenoid valves", "a regulator", "dryer filters"],
    "control": ["a spare HMI", "PLC batteries", "a network switch"],
    "sensor": ["prox switches", "a limit switch", "an encoder", "thermocouples", "photo eyes"],
}
PM = {
    "electrical": ["thermal scan of the panel", "tightening the terminals", "cleaning the drive fans"],
    "mechanical": ["greasing the bearings", "belt tension check", "gearbox oil change", "chain lube"],
    "hydraulic": ["hyd oil change", "hydraulic filter change", "hose inspection"],
    "pneumatic": ["draining the air filter bowls", "dryer service", "checking for air leaks"],
    "control": ["PLC program backup", "HMI software update"],
    "sensor": ["thermocouple calibration", "cleaning the vision camera lens", "encoder check"],
}
QUESTIONS = {
    "electrical": ["which breaker feeds the conveyor motor", "what size fuse goes in F{n}"],
    "mechanical": ["what is the torque spec for the coupling bolts", "which grease do we use on the bearings"],
    "hydraulic": ["which oil grade goes in the hyd unit", "what should the hydraulic pressure be"],
    "pneumatic": ["what pressure should the regulator be set to", "where is the air shutoff valve"],
    "control": ["how do I load the new recipe", "who has the HMI password", "can we get a new user on the HMI"],
    "sensor": ["what gap should the prox switch have", "how do I teach the vision camera a new part"],
}
COSMETIC = ["cover panel scratched, cosmetic only", "paint peeling on the frame", "dent in the side door, works fine",
            "warning label faded", "scuffed housing, no effect on parts"]
LOW = [  # templates over {tag}, {part}, {pm}, {q}, {cosmetic}
    "need {n} spare {part} for {tag}, no rush", "can we order {part} for {tag}? running fine",
    "pls restock {part} for {tag}, we used the last one", "{tag} due for {pm}", "PM on {tag}: {pm} next week",
    "schedule {pm} on {tag} when convenient", "question on {tag}: {q}?", "quick question - {q} on {tag}?",
    "{tag} {cosmetic}", "{tag}: {cosmetic}, whenever you have time",
]

FAULT_SENTENCES = ["{tag} {f}", "{f} on {tag}", "{tag}: {f}", "{tag} - {f}", "{eq} {tag} {f}",
                   "problem with {tag}, {f}",
                   "{f} at {tag}", "re {tag}: {f}", "{tag} {f} again", "looks like {tag} {f}",
                   "{o} is fine but {tag} {f}", "while working on {o} noticed {tag} {f}",
                   "after {o} was fixed, {tag} {f}"]
BYSTANDER = ["same thing happened on {o} last week", "{o} next to it is fine", "borrowed a spare from {o} for now",
             "{o} downstream is waiting on parts", "tech is busy on {o}, pls send someone else",
             "moved the operator to {o}", "not the same issue as {o}", "started after the work on {o} yesterday",
             "{o} is running normal", "please don't touch {o}, it's fine"]
DETAILS = ["{name} on 2nd shift noticed it", "started after lunch", "checked it twice", "ticket #{n}", "tried a reset",
           "no spare on the shelf", "see photo", "happened before in march", "night shift reported it",
           "first time we see this", "operator says it started around {time}", "{name} has the details"]
GREETINGS = ["hi,", "Hi maint team,", "2nd shift -", "night shift:", "fyi", "Hello,", "maint pls:", "@maint",
             "Line {line}:", "from {name}:"]
SIGNOFFS = ["thx", "thanks", "- {name}", "call {name} ext {n}", "cheers", "ty", "{name}", "thanks in advance"]
URGENT = ["URGENT", "asap pls", "need help now"]  # only on high and critical tickets

NAMES = ["Mike", "Ana", "Jose", "Priya", "Tom", "Kasia", "Ahmed", "Lena", "Dave", "Mei", "Raj", "Sven"]
CODES = ["F0004", "OC1", "E07", "F30001", "Err 21", "A-fault 7", "code 2310", "F12"]
ALARMS = ["part not present", "clamp not closed", "door open", "home position lost", "temperature out of range",
          "axis following error", "level low"]
SIDS = ["PX3", "B12", "S4", "LS2", "PE7", "B101", "S17"]
# asset tag prefixes (2-6 letters) with what an operator calls the machine
EQUIPMENT = {"CNC": "cnc", "PRESS": "press", "CONV": "conveyor", "ROB": "robot", "PMP": "pump", "CMP": "compressor",
             "OVEN": "oven", "WLD": "welder", "PKG": "packer", "FILL": "filler", "LBL": "labeler", "EXT": "extruder",
             "MIX": "mixer", "HPU": "power unit", "SAW": "saw", "MILL": "mill", "GRND": "grinder", "PAL": "palletizer",
             "WRAP": "wrapper", "IMM": "molder", "AGV": "AGV", "LATHE": "lathe", "DRL": "drill", "CUT": "cutter",
             "SORT": "sorter", "LIFT": "lift", "CRANE": "crane", "BNDR": "bender", "TRIM": "trimmer",
             "CAPPER": "capper"}
# operator shorthand: a word and what it may be written as
SHORTHAND = {"machine": ["mc", "m/c", "mach"], "please": ["pls", "plz"], "with": ["w/"], "hydraulic": ["hyd", "hydr"],
             "pneumatic": ["pneu"], "temperature": ["temp"], "maintenance": ["maint", "mtce"], "because": ["bc", "b/c"],
             "operator": ["op", "opr"], "pieces": ["pcs"], "running": ["runnin"], "again": ["agn"],
             "thanks": ["thx", "tks"], "minutes": ["min", "mins"], "and": ["&"]}


# --- the broader vocabulary (issue 25): what operators write beyond the first tables. Each addition keeps the
# rules above (fault fragments with their impacts; no tag-shaped token anywhere).
FAULTS["electrical"] += [
    ("servo drive alarm {code} on the axis, resets but comes back", "DR"), ("servo amplifier dead, no lights", "S"),
    ("thermal cut-out on the transformer tripped", "SR"), ("barrel heater zone {n} not heating", "XS"),
    ("motor drawing {n}A over nameplate, housing hot", "D"), ("lost a phase, motor humming", "S"),
    ("earth fault on the drive", "SR"), ("insulation fault alarm on the main panel", "SDR"),
    ("panel fan dead, cabinet getting hot", "D"), ("socket on the panel has no power", "DS"),
    ("brake on the hoist motor not releasing", "S"), ("motor protection switch keeps tripping", "DR"),
    ("soft starter faulted", "SR"),
    ("encoder cable cut by the chip conveyor, drive won't enable", "S"), ("UPS beeping, batteries low", "D"),
    ("loose connection in the junction box, terminal discoloured", "D"),
    ("RCD tripping when the heaters come on", "SR"),
    ("the motor do not start, contactor is clicking only", "S"), ("burnt smell from the terminal box, no smoke", "D"),
]
FAULTS["mechanical"] += [
    ("chain stretched, jumped a tooth", "DS"), ("roller bearing noisy", "D"),
    ("bearing running hot, {n}C on the housing", "DS"),
    ("shear pin sheared", "S"), ("key in the shaft sheared off, pulley spinning free", "S"),
    ("mesh belt torn in one section", "SD"), ("flat belt tracking off to one side", "DX"),
    ("knife blade chipped, cut edges ragged", "X"), ("back gauge stop broken", "XS"),
    ("gripper fingers bent, dropping parts", "XD"), ("screw conveyor flight worn through", "DS"),
    ("squeaking from a roller bearing", "D"), ("tooling worn, burrs on every part", "X"),
    ("die cracked", "S"), ("gib on the slide loose, knocking every stroke", "D"),
    ("fan blade hitting the guard, loud rattle", "DS"), ("wheel bearing on the trolley collapsed", "S"),
    ("brush on the washer worn down, parts not clean", "DX"),
    ("gearbox input shaft seal leaking oil, tray under it", "D"), ("chain fell off the wheel", "S"),
    ("spring on the tensioner broken, belt flapping", "DS"), ("stripper plate bent, parts sticking to the punch", "XS"),
    ("rollers on the transfer worn flat, parts skewing", "DX"), ("lubrication pump not greasing the slideway", "D"),
]
FAULTS["hydraulic"] += [
    ("accumulator pre-charge low, pressure not reaching setpoint", "XD"), ("hose fitting seeping, a few drops", "D"),
    ("rod seal leaking on the cylinder", "DS"),
    ("hydraulic motor on the winch stalling under load", "DS"), ("proportional valve sticking, axis jerks", "DX"),
    ("hose burst on the lift cylinder, oil on the floor", "S"),
    ("cylinder creeping under load", "XD"), ("oil cooler fan stopped, oil at {n}C", "DS"),
    ("hyd pump cavitating, loud whine and foam in the tank", "DS"), ("pressure gauge on the unit bouncing", "D"),
    ("hydraulic oil milky, water got in", "D"), ("lift table sinking slowly when loaded", "DS"),
]
FAULTS["pneumatic"] += [
    ("air cylinder rod seal leaking", "D"),
    ("air dryer alarm, dew point too high", "D"), ("push-in fitting popped off the air line", "SD"),
    ("air hose cut by the guard", "SD"), ("valve island fault, no outputs", "S"),
    ("vacuum cup torn, loses the sheet", "XD"), ("vacuum generator not pulling vacuum", "S"),
    ("air cylinder cushion gone, arm slams at the end", "D"), ("air knife blocked, parts not dried", "D"),
    ("silencer on the valve blocked, cylinder slow", "D"),
    ("compressor unloading all the time, pressure drops at shift start", "DS"),
    ("pilot valve buzzing, cylinder does half a stroke", "DX"), ("air motor on the mixer weak", "D"),
]
FAULTS["control"] += [
    ("program lost after the battery change", "S"),
    ("temperature loop tuning off, overshoots setpoint", "DX"), ("recipe on the HMI has the wrong dwell time", "X"),
    ("robot lost its home position after the crash", "S"),
    ("barcode printer not getting data from the line PC", "DS"), ("MES not receiving the counts", "D"),
    ("safety PLC and main PLC out of sync, can't reset", "S"), ("profinet error on the valve island", "SR"),
    ("parameters of the servo lost after power cut", "S"), ("label layout wrong after the software update", "X"),
    ("counter on the screen doesn't count up", "D"), ("remote access to the line PC not working", "D"),
    ("PLC gives 'CPU stop' after the power dip", "S"),
]
FAULTS["sensor"] += [
    ("door sensor not making", "S"), ("level sensor stuck, always reads full", "S"),
    ("temperature sensor reads high, actual temp normal", "D"), ("scale weighing wrong, packs under weight", "X"),
    ("encoder wheel slipping, cut lengths vary", "X"), ("photo eye dirty, misses parts", "DX"),
    ("checker rejecting good parts at random", "D"), ("flow meter showing zero but water is flowing", "DS"),
    ("pressure switch not switching, pump runs dry", "S"), ("colour sensor not seeing the mark", "XS"),
    ("thermocouple wire broken, zone reading open circuit", "S"),
    ("inductive sensor on the clamp loose, flickers", "DR"),
    ("distance sensor reading jumps around", "DX"), ("temperature probe in the tank reads {n} degrees off", "D"),
]
DANGER += [
    "operator got a shock from the cabinet", "e-stop on the panel doesn't work",
    "operator's sleeve caught in the roller, he pulled free", "oil on the walkway, two people slipped",
    "guard interlock switch taped over", "hot metal splashed out of the die onto the walkway",
    "gas smell near the burner", "chemical splash, operator's eye rinsed at the station",
    "ladder at the platform broken", "safety relay bypassed", "forklift hit the guard fence, fence bent open",
    "glass from a broken light fell onto the work area", "exposed live wires at the panel, door won't close",
    "crane dropped a load, nobody under it", "pinch point exposed after the cover was removed",
]
IMPACTS["S"] += ["down", "stopped it", "nothing is coming out", "off until fixed",
                 "waiting on maint, mc off", "we cannot run", "no production on this line", "DOWN!!",
                 "can't restart it", "stopped, waiting for the electrician", "dead in the water", "out of action",
                 "line is at a standstill", "stopped the line", "machine not working", "the machine not run"]
IMPACTS["X"] += ["still running, sorting parts by hand", "QA put the last {n} boxes on hold",
                 "roughly every {n}th part is bad", "still running but every part is bad",
                 "{n} bad ones sorted out, still running", "product off spec, still producing",
                 "quality hold on today's parts", "making scrap, we keep running",
                 "customer parts failing the check", "bad welds, running", "out of tolerance, still cycling"]
IMPACTS["XS"] = ["scrapped {n} pcs before we noticed, stopped it"]  # scrap and stopped (also joined from X and S)
IMPACTS["D"] += ["running at {n}% speed", "misses one now and then", "operator sorting them out",
                 "parts still in spec", "runs fine otherwise", "only a few drops", "works for now",
                 "can wait till the weekend", "not urgent but getting worse", "keeps going", "still works",
                 "running slower than normal", "still producing", "running, but please look", "annoying but running",
                 "production continues", "line running"]
IMPACTS["R"] += ["ok again after {n} min", "after a reset it works again", "reset it, running",
                 "happened {n} times, ok again now", "stopped for {n} min, back running", "running again now",
                 "came back on its own", "we restarted, ok for now", "was down this morning, running now"]
DANGER_STOPPED += ["switched it off", "stopped until fixed", "line stopped", "isolated it"]
DANGER_RUNNING += ["running normal", "machine running", "still in production",
                   "nobody hurt, line still going", "production continues", "we keep running"]
for table, more in (
    (PARTS, {"electrical": ["contactors", "spare motors", "drive fans", "panel lamps"],
             "mechanical": ["spare gearboxes", "timing belts", "rollers", "spare chains"],
             "hydraulic": ["hose fittings", "spare pumps", "pressure gauges"],
             "pneumatic": ["push-in fittings and air hose", "spare cylinders", "vacuum cups"],
             "control": ["spare PLC cards", "touch screens", "printer ribbons"],
             "sensor": ["spare photo eyes", "level sensors", "spare RTDs"]}),
    (PM, {"electrical": ["thermography round", "earth connection check"],
          "mechanical": ["greasing the slideways", "backlash check", "wear strip change"],
          "hydraulic": ["oil sample", "breather filter change"],
          "pneumatic": ["filter element change", "cylinder cushion check"],
          "control": ["robot program backup", "PLC battery change"],
          "sensor": ["scale calibration", "sensor check"]}),
    (QUESTIONS, {"electrical": ["who has the key to the panel", "is the spare motor the right one"],
                 "mechanical": ["how often should the chain be lubed", "is there a spare gearbox"],
                 "hydraulic": ["when is the oil sample due", "which hose size do we need"],
                 "pneumatic": ["can we get a second air gun", "what is the dew point supposed to be"],
                 "control": ["can we get a short-run recipe", "how do I change the clock on the HMI"],
                 "sensor": ["when is the calibration due", "can someone calibrate the scale"]}),
):
    for category, phrases in more.items():  # by name, as FAULTS above: no reliance on the tables' key order
        table[category] += phrases
COSMETIC += ["dent in a panel, no effect", "cracked cover on the lamp",
             "paint chipped on the guard", "sticker coming off", "rust spots on the frame"]
LOW += [
    "{n}x {part} needed for {tag}, for the shelf", "restock {part} for {tag}, not urgent",
    "{tag}: can we get {part}? we can fit it during the next stop", "{tag} {pm} overdue, please plan it",
    "{tag} {pm} at next shutdown pls", "when can we do {pm} on {tag}? no problem, just planning",
    "{q} for {tag}?", "{tag} - {q}? machine fine", "{tag}: {cosmetic}",
    "FYI {tag} {cosmetic}, no action needed", "{tag} runs fine, but {pm} is due", "reminder: {pm} on {tag} this month",
]
FAULT_SENTENCES += ["{tag} ({eq}): {f}", "the {eq} {tag} {f}", "{f} on the {eq} ({tag})", "on {tag} the {f}",
                    "{eq} {tag} - {f}", "{tag} has {f}", "{f}, {tag}", "{tag} again: {f}"]
BYSTANDER += ["{o} running on its own for now", "running the parts on {o} instead", "{o} ok", "took the part from {o}",
              "same on {o} last month", "{o} is next in line for the same check"]
DETAILS += ["checked the fuses, all ok", "measured {n}V at the terminals", "photo on the shared drive",
            "spare is ordered", "the tech from days knows it", "happened after the changeover", "{n} times this shift",
            "cleaned it, no change", "no alarm on the HMI", "logged in the shift book", "supplier called",
            "I think it is the same as before", "we checked the wiring, looks ok", "see ticket #{n}"]
GREETINGS += ["Re #{n}:", "Update:", "Follow-up:", "Shift report:", "Morning,", "For electrician:", "Mechanic pls:",
              "Dear maintenance,", "Hello team,"]
SIGNOFFS += ["regards", "BR", "{name} (shift lead)", "pls call me", "many thanks", "thank you"]
EQUIPMENT.update({"BOIL": "boiler", "FRK": "forklift", "GEAR": "gear cutter", "ROLL": "roll former",
                  "SHT": "shot blaster", "AC": "air compressor", "TANK": "tank", "PUNCH": "punch press",
                  "SHEAR": "shear", "LOOM": "loom", "VAC": "vacuum pump", "CHIP": "chip conveyor", "ELEV": "elevator",
                  "HEAT": "heater", "TWR": "cooling tower", "DEBUR": "deburring machine", "POL": "polisher",
                  "SPRY": "sprayer", "FURN": "furnace", "QNCH": "quench tank", "EDM": "EDM", "TAP": "tapping unit",
                  "ASSY": "assembly station", "TEST": "test rig", "WIND": "winder", "SLIT": "slitter",
                  "PRNT": "printer", "BLEND": "blender", "HOP": "hopper", "RACK": "rack", "CLEAN": "cleaner",
                  "LASER": "laser cutter", "PLAS": "plasma cutter", "BRAKE": "press brake", "ANOD": "anodizing line",
                  "ZIP": "zipper"})
# words for an asset whose prefix is not in EQUIPMENT (a generated one)
GENERIC_EQ = ["machine", "unit", "station", "cell", "line", "mc"]

# What an operator saw, tried or suspects, written before or after how the line runs (generate.py --long-form):
# nothing here says the line runs or stopped, how bad it is, or names a fault category.
ELABORATION = ["second time this week", "no idea what changed", "it got worse since the morning",
               "we looked at it yesterday and found nothing", "tightened what we could reach",
               "tried it twice, same result", "the part we fitted last month did not help", "it was fine on friday",
               "{name} thinks it is worn out", "it's been like this since {time}", "numbers are in the shift log",
               "we have a spare in the cabinet", "could be the same thing as last month",
               "not sure if it has to do with the changeover", "cleaned around it, no difference",
               "{name} had a look, no luck", "took the cover off, can't see anything",
               "swapped it with the one from stores, same thing", "the old one is on the bench if you want it",
               "worse on nights", "happens more when it's warm", "we reset it {n} times",
               "the manual says to call you", "asked the supplier, waiting for an answer",
               "looks like it was patched before", "first noticed it at {time}", "no error on the screen",
               "{name} from days says it did the same before"]
