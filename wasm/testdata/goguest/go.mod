module sluice.test/goguest

go 1.26
